"""The provider contract (DESIGN §3): what a provider type implements and the requests it is given.

A provider type is one module of plain functions over plain data: build the upstream call from
an OpenAI request, turn the upstream's answer (whole, or event by event) back into OpenAI's shape,
and classify its errors so retry, fallback and cooldown never depend on the provider. Modules
under ``providers/`` do no I/O and import no aiohttp.

The native half (DESIGN §12, §14): for a dialect the provider speaks itself, the caller's body is
passed through with only ``model`` rewritten, and the answer comes back as the provider's own
bytes. ``native`` says whether an attempt is one, ``build_native_request`` makes its call, a
``NativeStream`` relays its events (deciding the commit point, reading the usage, raising in-band
errors before it) and ``read_native_answer`` reads a whole answer's usage and id. A dialect is
named by its string; only ``dialects/`` parses one's requests.

``config`` and ``auth`` are named here, and in every translator, for annotations only: config.py
reads the type catalog, so a run-time import of either from this package would be a circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import orjson

from ..calls import UpstreamCall
from ..errors import GatewayError, UnsupportedField, UpstreamError
from ..sse import SseEvent

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

__all__ = ["ChatRequest", "EmbeddingsRequest", "Framer", "NativeAnswer", "NativeStream", "Provider", "StreamDecoder",
           "Translated", "Uncounted", "UpstreamCall", "path_segment", "read_input_tokens"]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body. Translators copy it; they never mutate ``body``."""

    body: Mapping[str, Any]
    stream: bool = False
    wants_usage: bool = False  # the caller set stream_options.include_usage
    # Caller headers that may cross to an upstream (auth.FORWARDED_HEADERS), already filtered.
    headers: Mapping[str, str] = field(default_factory=dict)
    # The caller's body in its own dialect, for a provider that speaks that dialect natively: as
    # the caller sent it, less the state the gateway made (dialects/native.py). None where the
    # dialect is the pivot's own (chat), whose translators are already the passthrough.
    native: Mapping[str, Any] | None = None
    # The caller's query string, for a native passthrough that keeps part of it (Messages' `?beta=true`).
    native_query: str = ""
    # A pivot extension (DESIGN §12): the cache breakpoints the caller marked (Anthropic's
    # `cache_control`). Chat has no field for them; a translator that cannot keep them drops them,
    # and the relay counts what was dropped.
    cache_markers: int = 0
    # Set only by a dialect that keeps thinking state for its caller: translators then put the
    # provider's state on the answer (the pivot extension of providers/reasoning.py).
    wants_reasoning_state: bool = False


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A validated ``/v1/embeddings`` body."""

    body: Mapping[str, Any]
    base64: bool = False  # the caller asked for encoding_format: base64 (the openai SDK's default)


class StreamDecoder(Protocol):
    """Fed upstream events one by one; returns encoded OpenAI SSE events for the client.

    ``visible`` turns true once something the client must see has been produced (content, a tool
    call, a finish_reason): that is the commit point, and the relay holds everything until then.
    ``done`` turns true when the upstream signalled the end; ``usage`` holds the provider's counts.
    """

    visible: bool
    done: bool
    usage: Mapping[str, Any] | None

    def feed(self, event: SseEvent) -> list[bytes]:
        """Encoded events to send for one upstream event; raises UpstreamError for an in-band error."""
        ...

    def close(self) -> list[bytes]:
        """At upstream end of stream: trailing events, or UpstreamError if the stream was cut short."""
        ...

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        """``chunk`` (read while the framer held nothing) as the leading whole events that go to the
        client unchanged, neither framed nor fed, and the rest, to frame and feed. A translator's
        plain part is always empty."""
        ...


@runtime_checkable
class NativeStream(StreamDecoder, Protocol):
    """A native passthrough's decoder: upstream events in, the same events out as the client's bytes.

    Beside ``StreamDecoder``'s duties it keeps what the dialect needs to end the stream in its own
    grammar after the commit point, and what the gateway records of the answer: ``response_id`` (the
    upstream's id for it, once an event named it), ``opening`` (the upstream's first description of
    the answer, e.g. the Response of ``response.created``) and ``sequence`` (the next event's
    ``sequence_number``, for dialects that number their events). ``usage`` is in the pivot's shape.
    """

    response_id: str | None
    opening: Mapping[str, Any] | None
    sequence: int


class NativeState:
    """The state every native stream decoder keeps (``NativeStream``'s fields), fresh per attempt."""

    __slots__ = ("_provider", "done", "opening", "response_id", "sequence", "usage", "visible")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.visible = False
        self.done = False
        self.usage: Mapping[str, Any] | None = None
        self.response_id: str | None = None
        self.opening: Mapping[str, Any] | None = None
        self.sequence = 0  # the next event's sequence_number, for dialects that number them


@dataclass(frozen=True, slots=True)
class NativeAnswer:
    """What the gateway reads of a whole native answer it relays as it came: the usage (in the
    pivot's shape, for accounting) and the upstream's id for the answer."""

    usage: Mapping[str, Any] | None
    response_id: str | None


class Framer(Protocol):
    """Cuts a streamed body into upstream events as bytes arrive: SSE, or AWS event-stream messages."""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Events completed by ``chunk``; raises UpstreamError or SseError on broken framing."""
        ...

    def flush(self) -> list[SseEvent]:
        """What is left at the end of the body."""
        ...

    @property
    def idle(self) -> bool:
        """No part of an event is buffered: the next bytes start a new event."""
        ...


class Provider(Protocol):
    """One wire format. Every method is pure."""

    def framer(self) -> Framer:
        """A fresh framer for one streamed attempt (SSE for every type but bedrock)."""
        ...

    def build_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                      credential: Credential) -> UpstreamCall:
        """The upstream call for a chat request; raises UnsupportedField for what it cannot express."""
        ...

    def parse_response(self, req: ChatRequest, provider: ProviderConfig, body: bytes) -> bytes:
        """A successful non-streamed upstream body → the OpenAI ``chat.completion`` body."""
        ...

    def stream_decoder(self, req: ChatRequest, provider: ProviderConfig) -> StreamDecoder:
        """A fresh decoder for one streamed attempt."""
        ...

    def classify_error(self, provider: ProviderConfig, status: int, headers: Mapping[str, str],
                       body: bytes) -> UpstreamError:
        """An upstream error response → the gateway's error, with the kind fallback looks at."""
        ...

    def build_embeddings_request(self, req: EmbeddingsRequest, provider: ProviderConfig, model: str,
                                 credential: Credential) -> list[UpstreamCall]:
        """The upstream calls for embeddings (several when the provider takes inputs in batches,
        sent concurrently); 400 where the provider type has none."""
        ...

    def parse_embeddings_response(self, req: EmbeddingsRequest, provider: ProviderConfig,
                                  bodies: list[bytes]) -> bytes:
        """The successful upstream bodies, in call order → OpenAI's list, in the caller's encoding."""
        ...

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        """Whether a request in ``dialect`` is passed through to ``model`` at ``provider``, not translated."""
        ...

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        """The upstream call for a native attempt: ``req.native`` with ``model`` set to the endpoint's."""
        ...

    def native_decoder(self, dialect: str, req: ChatRequest, provider: ProviderConfig) -> NativeStream:
        """A fresh decoder for one streamed native attempt."""
        ...

    def read_native_answer(self, dialect: str, provider: ProviderConfig, body: bytes) -> NativeAnswer:
        """A successful non-streamed native body (relayed as it came) → its usage and id; raises
        ValueError (or UpstreamError) when it is not an answer in the dialect's shape."""
        ...

    def build_native_lookup(self, dialect: str, provider: ProviderConfig, method: str, path: str,
                            credential: Credential) -> UpstreamCall:
        """A call for what a native answer left at the provider (a stored Response): ``method`` on
        ``path`` (already encoded, e.g. ``/resp_1/input_items?limit=5``) under the dialect's native path."""
        ...

    def build_count_tokens_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                                   credential: Credential) -> UpstreamCall | None:
        """The call that counts ``req``'s input tokens with the provider's own counter (Anthropic's
        count_tokens, Bedrock's CountTokens, Vertex's), or None where the type has none for ``model``."""
        ...

    def read_count_tokens(self, provider: ProviderConfig, body: bytes) -> int:
        """The input tokens in a counter's successful answer; ValueError when it holds none."""
        ...


class Uncounted:
    """The counter half for a type without a token counter: callers get the gateway's estimate."""

    __slots__ = ()

    def build_count_tokens_request(self, req: ChatRequest, provider: ProviderConfig, model: str,
                                   credential: Credential) -> UpstreamCall | None:
        return None

    def read_count_tokens(self, provider: ProviderConfig, body: bytes) -> int:
        raise ValueError(f"provider '{provider.name}' has no token counter")


class Translated(Uncounted):
    """The native half for a type that passes no dialect through (yet): every request is translated."""

    __slots__ = ()

    def native(self, dialect: str, provider: ProviderConfig, model: str) -> bool:
        return False

    def build_native_request(self, dialect: str, req: ChatRequest, provider: ProviderConfig, model: str,
                             credential: Credential) -> UpstreamCall:
        raise UnsupportedField("model", f"Provider '{provider.name}' does not speak {dialect!r} natively.")

    def native_decoder(self, dialect: str, req: ChatRequest, provider: ProviderConfig) -> NativeStream:
        raise UnsupportedField("model", f"Provider '{provider.name}' does not speak {dialect!r} natively.")

    def read_native_answer(self, dialect: str, provider: ProviderConfig, body: bytes) -> NativeAnswer:
        raise UnsupportedField("model", f"Provider '{provider.name}' does not speak {dialect!r} natively.")

    def build_native_lookup(self, dialect: str, provider: ProviderConfig, method: str, path: str,
                            credential: Credential) -> UpstreamCall:
        raise UnsupportedField("model", f"Provider '{provider.name}' does not speak {dialect!r} natively.")


_SEGMENT_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def path_segment(value: str, what: str) -> str:
    """A model id or deployment name as one percent-encoded URL path segment.

    Never trusted as URL material: control characters and the dot segments ``.``/``..`` are
    refused outright (400); everything outside RFC 3986's unreserved set is percent-encoded, so
    ``/``, ``?``, ``#`` and ``:`` cannot change the path, query or fragment.
    """
    if not value or len(value) > 512:
        raise GatewayError(400, f"Invalid {what}: must be 1 to 512 characters.", param="model",
                           code="invalid_model")
    if value in (".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise GatewayError(400, f"Invalid {what} {value!r}.", param="model", code="invalid_model")
    if all(c in _SEGMENT_SAFE for c in value):
        return value
    return "".join(c if c in _SEGMENT_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in value)


def read_input_tokens(body: bytes, *names: str) -> int:
    """A counter's answer (a JSON object) → the count under the first of ``names`` it holds;
    ValueError when it holds none."""
    parsed = orjson.loads(body)
    for name in names:
        value = parsed.get(name) if isinstance(parsed, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    raise ValueError(f"a token count answer without {' or '.join(names)}")
