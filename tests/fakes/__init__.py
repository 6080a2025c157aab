"""Fakes for the gateway's tests: real servers on 127.0.0.1, never mocks of the transport.

`FakeUpstream` speaks the providers' wire formats, records every request and misbehaves when a
fault word (`FAULT_WORDS`) appears in the model name.
"""

from tests.fakes.upstream import (
    AZURE_MODEL,
    EMBEDDING_SIZE,
    FAULT_WORDS,
    FLAVORS,
    TOOL_ARGUMENTS,
    FakeUpstream,
    Flavor,
    Recorded,
    Scripted,
    embedding_vector,
)

__all__ = [
    "AZURE_MODEL",
    "EMBEDDING_SIZE",
    "FAULT_WORDS",
    "FLAVORS",
    "TOOL_ARGUMENTS",
    "FakeUpstream",
    "Flavor",
    "Recorded",
    "Scripted",
    "embedding_vector",
]
