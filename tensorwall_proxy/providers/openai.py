"""OpenAI and every OpenAI-compatible type by parameters: openai, groq, mistral, lmstudio, ollama.

Natively, each passes through the dialects its provider speaks (``ProviderConfig.speaks``: openai
speaks responses by default, any of them what its YAML ``dialects:`` declares) at
``{base_url}{api root}/responses`` and ``/completions``.

What distinguishes the types is a ``Wire`` (where the API lives, whether it takes
``stream_options``, its tool call id form, its embeddings) and their catalog entry's field policy;
the wire itself is ``openai_wire``.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson
from yarl import URL

from ..errors import UnsupportedField, UpstreamError
from ..sse import SseDecoder
from .catalog import TYPES
from .contract import ChatRequest, EmbeddingsRequest, Uncounted, UpstreamCall
from .ids import IdStyle
from .openai_wire import (
    NATIVE_PATHS,
    NativeReading,
    PassthroughStream,
    adapt_chat_body,
    auth_headers,
    classify_openai_error,
    embeddings_to_base64,
    native_body,
    upstream_url,
)

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig


@dataclass(frozen=True, slots=True)
class Wire:
    """What distinguishes one OpenAI-compatible type's wire from another's (the field policy is the
    type's catalog entry's)."""

    api_root: str = ""               # appended to base_url before /chat/completions (ollama: "/v1")
    asks_usage: bool = True          # accepts stream_options.include_usage
    id_style: IdStyle = "openai"
    embeddings_floats_only: bool = False  # answers float lists whatever encoding_format says
    embeddings_renamed: tuple[tuple[str, str], ...] = ()  # caller's name → the type's, in an embeddings body
    embeddings_dropped: tuple[str, ...] = ()


WIRE: Final[dict[str, Wire]] = {
    "openai": Wire(),
    "groq": Wire(),
    # Mistral has no stream_options (422).
    "mistral": Wire(asks_usage=False, id_style="mistral", embeddings_floats_only=True,
                    embeddings_renamed=(("dimensions", "output_dimension"),), embeddings_dropped=("user",)),
    "lmstudio": Wire(embeddings_floats_only=True),
    # Ollama's OpenAI-compatible API lives under /v1 of the server root.
    "ollama": Wire(api_root="/v1", embeddings_floats_only=True),
}


class OpenAICompatible(NativeReading, Uncounted):
    """The Provider for openai, groq, mistral, lmstudio and ollama, parameterised by ``Wire``."""

    def __init__(self, provider_type: str) -> None:
        self.type = provider_type
        self.kind = TYPES[provider_type]
        self.wire = WIRE[provider_type]

    def framer(self) -> SseDecoder:
        return SseDecoder()

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        body = adapt_chat_body(req, self.kind.policy, self.wire.id_style, asks_usage=self.wire.asks_usage)
        body["model"] = model
        headers = auth_headers(self.kind.forwarded_headers, credential, req.headers)
        return UpstreamCall("POST", upstream_url(provider.base_url, self.wire.api_root + "/chat/completions"),
                            headers, orjson.dumps(body), req.stream)

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        return body  # already OpenAI's shape: relayed as bytes

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> PassthroughStream:
        return PassthroughStream(provider.name, hide_usage=self.wire.asks_usage and not req.wants_usage,
                                 split_usage=not self.wire.asks_usage and req.wants_usage)

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        return classify_openai_error(provider, status, headers, body)

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        if not self.kind.embeddings:
            raise UnsupportedField("model", f"Provider type '{self.type}' has no embeddings.")
        body = dict(req.body)
        body["model"] = model
        if self.wire.embeddings_floats_only:
            body.pop("encoding_format", None)  # ask for floats; base64 is packed here if wanted
        for old, new in self.wire.embeddings_renamed:
            if old in body:
                body[new] = body.pop(old)
        for name in self.wire.embeddings_dropped:
            body.pop(name, None)
        headers = auth_headers((), credential, {})
        return [UpstreamCall("POST", upstream_url(provider.base_url, self.wire.api_root + "/embeddings"),
                             headers, orjson.dumps(body))]

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        if req.base64 and self.wire.embeddings_floats_only:
            return embeddings_to_base64(bodies[0])
        return bodies[0]

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return dialect in provider.speaks and dialect in NATIVE_PATHS

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        headers = auth_headers(self.kind.forwarded_headers, credential, req.headers)
        url = upstream_url(provider.base_url, self.wire.api_root + NATIVE_PATHS[dialect])
        return UpstreamCall("POST", url, headers, native_body(req, model), req.stream)

    def build_native_lookup(self, dialect: str, provider: ProviderConfig, method: str, path: str,
                            credential: Credential) -> UpstreamCall:
        url = URL(provider.base_url + self.wire.api_root + NATIVE_PATHS[dialect] + path, encoded=True)
        return UpstreamCall(method, url, auth_headers((), credential, {}), b"")
