"""Anthropic's Messages wire as the types that carry Claude natively return it (DESIGN §12, §14).

``anthropic``, ``bedrock`` (Anthropic models, InvokeModel) and ``vertex`` (Claude, rawPredict) pass
``/v1/messages`` through; their answers are read here: the stream decoder that relays the
upstream's events as they came while deciding the commit point, reading the usage from
``message_start`` and ``message_delta`` and turning an in-band ``error`` before the commit point
into an ``UpstreamError``; and the reader of a whole Message's usage and id. Bedrock's frames carry
the same events base64-encoded: its decoder unwraps them and hands them to ``relay``.

The commit point (DESIGN §14): a stream commits at its first text, thinking or tool-argument
delta, a ``tool_use`` (or any other non-text) block start, or a terminal event. ``message_start``,
``ping`` and the start of a text or thinking block are held.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import orjson

from ..errors import UnsupportedField, UpstreamError
from ..sse import SseEvent, encode, plain_run
from ..tokens import count_of
from .contract import ChatRequest, NativeAnswer, NativeState, NativeStream, UpstreamCall
from .responses_wire import in_band_error
from .shapes import load_object, obj

if TYPE_CHECKING:
    from ..auth import Credential
    from ..config import ProviderConfig

# Blocks whose start is held: an empty text or thinking block shows the client nothing yet.
_HELD_BLOCKS: Final = frozenset({"text", "thinking"})
# Events that show the client nothing: held before the commit point.
_HELD: Final = frozenset({"message_start", "ping", "content_block_stop"})
# Markers of the events that need a look after the commit point: the usage, the end, an error.
_MARKERS: Final = (b"message_delta", b"message_stop", b"error")


def pivot_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """A Message's usage in the pivot's shape: Anthropic's cache counts add to its input_tokens."""
    prompt = (count_of(usage, "input_tokens") + count_of(usage, "cache_read_input_tokens")
              + count_of(usage, "cache_creation_input_tokens"))
    completion = count_of(usage, "output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class MessagesPassthrough(NativeState):
    """The native decoder for a Messages stream: each upstream event goes to the client unchanged
    (Messages events are not numbered: ``sequence`` stays 0)."""

    __slots__ = ("_counts",)

    def __init__(self, provider: str) -> None:
        super().__init__(provider)
        self._counts: dict[str, Any] = {}

    def feed(self, event: SseEvent) -> list[bytes]:
        return self.relay(event.data)

    def relay(self, data: bytes) -> list[bytes]:
        """One Anthropic event (its JSON) → the bytes the client gets, named by its ``type``."""
        parsed = load_object(data, self._provider, "an event")
        kind = parsed.get("type")
        if kind == "error":
            raise in_band_error(self._provider, obj(parsed.get("error")), f"Upstream '{self._provider}' failed "
                                                                           "mid-stream.")
        if kind == "message_start":
            message = obj(parsed.get("message"))
            self.opening = message
            if isinstance(message.get("id"), str):
                self.response_id = message["id"]
            self._counts.update(obj(message.get("usage")))
        elif kind == "message_delta":
            self._counts.update(obj(parsed.get("usage")))  # output_tokens is a running total
            self.usage = pivot_usage(self._counts)
            self.visible = True
        elif kind == "message_stop":
            self.usage = pivot_usage(self._counts)
            self.done = self.visible = True
        elif not self.visible and kind not in _HELD:
            block = parsed.get("content_block")
            self.visible = not (kind == "content_block_start" and isinstance(block, dict)
                                and block.get("type") in _HELD_BLOCKS and not block.get("text"))
        if not isinstance(kind, str) or not kind.isascii() or not kind.isprintable():
            kind = "unknown"  # an event name is one printable line
        if b"\n" in data or b"\r" in data:
            data = orjson.dumps(parsed)  # pretty-printed upstream JSON, made one SSE data line
        return [encode(data, kind)]

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        """Past the commit point, the leading whole events of ``chunk`` that hold no usage, no end and
        no error: they go out as the upstream sent them, unparsed (content deltas, block starts and
        stops). A marker inside content is only a false alarm: that event takes the parsed path."""
        end = plain_run(chunk, _MARKERS) if self.visible and not self.done else 0
        if not end:
            return b"", chunk
        return (chunk[:end], chunk[end:]) if end < len(chunk) else (chunk, b"")

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError("server", 502, f"Upstream '{self._provider}' ended the stream before "
                                               "message_stop.", provider=self._provider)
        return []


def read_answer(provider: str, body: bytes) -> NativeAnswer:
    """A whole Message relayed as it came: its usage in the pivot's shape and its id; ValueError when
    it is not a Message."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict) or parsed.get("type") != "message" or not isinstance(parsed.get("content"), list):
        raise ValueError(f"upstream '{provider}' sent an answer that is not a Message")
    message_id = parsed.get("id")
    return NativeAnswer(pivot_usage(obj(parsed.get("usage"))), message_id if isinstance(message_id, str) else None)


class NativeMessages:
    """The half of the native contract every carrier of Claude shares: a Messages stream relayed as
    it came (``native_decoder``), a whole Message read for its usage and id; nothing kept to look up."""

    __slots__ = ()

    def native_decoder(self, dialect: str, req: ChatRequest, provider: ProviderConfig) -> NativeStream:
        return MessagesPassthrough(provider.name)

    def read_native_answer(self, dialect: str, provider: ProviderConfig, body: bytes) -> NativeAnswer:
        return read_answer(provider.name, body)

    def build_native_lookup(self, dialect: str, provider: ProviderConfig, method: str, path: str,
                            credential: Credential) -> UpstreamCall:
        raise UnsupportedField("model", f"Provider '{provider.name}' keeps no answers to look up.")
