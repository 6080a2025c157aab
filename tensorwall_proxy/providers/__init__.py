"""The registry of the nine provider types: each type's catalog entry and its implementation.

The contract every type implements is ``contract.py``; what the rest of the gateway may know about
a type is its ``catalog.ProviderType``. Adding a type is one catalog entry, one module and one line
here.
"""

from __future__ import annotations

from typing import Final

from . import anthropic, azure, bedrock, openai, vertex
from .catalog import TYPES, ProviderType
from .contract import (
    ChatRequest,
    EmbeddingsRequest,
    Framer,
    NativeAnswer,
    NativeStream,
    Provider,
    StreamDecoder,
    UpstreamCall,
    path_segment,
)

__all__ = ["PROVIDERS", "TYPES", "ChatRequest", "EmbeddingsRequest", "Framer", "NativeAnswer", "NativeStream",
           "Provider", "ProviderType", "StreamDecoder", "UpstreamCall", "path_segment", "provider_for"]

# Handles for the Python API of llm-providers.md: `RouteEndpoint(provider=openai_provider, ...)`.
openai_provider: Final = "openai"
anthropic_provider: Final = "anthropic"
azure_openai_provider: Final = "azure"
vertex_provider: Final = "vertex"
groq_provider: Final = "groq"
mistral_provider: Final = "mistral"
bedrock_provider: Final = "bedrock"
ollama_provider: Final = "ollama"
lmstudio_provider: Final = "lmstudio"

PROVIDERS: Final[dict[str, Provider]] = {
    **{name: openai.OpenAICompatible(name) for name in openai.WIRE},
    "azure": azure.Azure(),
    "anthropic": anthropic.Anthropic(),
    "vertex": vertex.Vertex(),
    "bedrock": bedrock.Bedrock(),
}
assert PROVIDERS.keys() == TYPES.keys(), "every catalog entry has an implementation"


def provider_for(type_: str) -> Provider:
    """The implementation of a provider type (config.py admits only the catalog's)."""
    return PROVIDERS[type_]
