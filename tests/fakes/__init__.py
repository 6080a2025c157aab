"""Fakes for the gateway's tests: real servers on 127.0.0.1, never mocks of the transport.

`FakeUpstream` speaks the providers' wire formats (six OpenAI-style flavors and Anthropic's Messages
API), records every request and misbehaves when a fault word (`FAULT_WORDS`, and for the anthropic
flavor `ANTHROPIC_FAULT_WORDS`) appears in the model name.
"""

from tests.fakes.upstream import (
    ANTHROPIC_CACHE_CREATION_TOKENS,
    ANTHROPIC_CACHE_READ_TOKENS,
    ANTHROPIC_FAULT_WORDS,
    ANTHROPIC_THINKING_PREFIX,
    ANTHROPIC_TOOL_INPUT,
    ANTHROPIC_TOOL_PREAMBLE,
    AZURE_MODEL,
    EMBEDDING_SIZE,
    FAULT_WORDS,
    FLAVORS,
    TOOL_ARGUMENTS,
    FakeUpstream,
    Flavor,
    Recorded,
    Scripted,
    anthropic_signature,
    anthropic_thinking_block,
    embedding_vector,
)

__all__ = [
    "ANTHROPIC_CACHE_CREATION_TOKENS",
    "ANTHROPIC_CACHE_READ_TOKENS",
    "ANTHROPIC_FAULT_WORDS",
    "ANTHROPIC_THINKING_PREFIX",
    "ANTHROPIC_TOOL_INPUT",
    "ANTHROPIC_TOOL_PREAMBLE",
    "AZURE_MODEL",
    "EMBEDDING_SIZE",
    "FAULT_WORDS",
    "FLAVORS",
    "TOOL_ARGUMENTS",
    "FakeUpstream",
    "Flavor",
    "Recorded",
    "Scripted",
    "anthropic_signature",
    "anthropic_thinking_block",
    "embedding_vector",
]
