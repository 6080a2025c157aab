"""Server-Sent Events: an incremental decoder with a bounded event size, and the encoder.

Pure: fed bytes as they arrive, it returns whole events; it never reads a socket. Events may be
separated by LF, CRLF or CR line ends (Google's servers send CRLF); ``:`` lines are comments
(keep-alives) and are dropped; several ``data:`` lines of one event are joined with ``\\n``.
"""

from __future__ import annotations

from typing import NamedTuple

DEFAULT_MAX_EVENT_BYTES = 4 * 1024 * 1024
DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


class SseError(ValueError):
    """The stream broke the SSE framing (an event larger than the bound)."""


class SseEvent(NamedTuple):
    event: str | None
    data: bytes


class SseDecoder:
    """Turns a byte stream into events; ``feed`` as bytes arrive, ``flush`` at end of stream."""

    __slots__ = ("_after_cr", "_buffer", "_max")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._buffer = b""
        self._max = max_event_bytes
        self._after_cr = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Events completed by ``chunk`` (possibly none)."""
        if self._after_cr and chunk:
            # The previous chunk ended in CR, already taken as a line end: a LF right after it is
            # the rest of that CRLF, not a second line end.
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\n\n" not in buffer:
            if len(buffer) > self._max:
                raise SseError(f"an SSE event exceeded {self._max} bytes")
            self._buffer = buffer
            return []
        parts = buffer.split(b"\n\n")
        self._buffer = parts.pop()
        if len(self._buffer) > self._max:
            raise SseError(f"an SSE event exceeded {self._max} bytes")
        events: list[SseEvent] = []
        for raw in parts:
            if len(raw) > self._max:
                raise SseError(f"an SSE event exceeded {self._max} bytes")
            event = _parse_event(raw)
            if event is not None:
                events.append(event)
        return events

    @property
    def idle(self) -> bool:
        """No part of an event is buffered: the next bytes start a new event."""
        return not self._buffer and not self._after_cr

    def flush(self) -> list[SseEvent]:
        """The last event, when the stream ended without a blank line after it."""
        raw, self._buffer = self._buffer, b""
        event = _parse_event(raw.rstrip(b"\n")) if raw.strip() else None
        return [event] if event is not None else []


# Event names seen, decoded once each (bounded: the names come from upstreams).
_NAMES: dict[bytes, str] = {}


def _parse_event(raw: bytes) -> SseEvent | None:
    # Fast paths: the overwhelmingly common single-line `data: ...` event (OpenAI, Google), and
    # `event: name` + one `data: ...` line (Anthropic).
    if raw.startswith(b"data:"):
        if b"\n" not in raw:
            data = raw[5:]
            return SseEvent(None, data[1:] if data.startswith(b" ") else data)
    elif raw.startswith(b"event:"):
        head, _, data = raw.partition(b"\n")
        if data.startswith(b"data:") and b"\n" not in data and head:
            data = data[5:]
            return SseEvent(_name(head[6:]), data[1:] if data.startswith(b" ") else data)
    name: str | None = None
    data_lines: list[bytes] = []
    for line in raw.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if not data_lines:
        return None
    return SseEvent(name, b"\n".join(data_lines))


def _name(value: bytes) -> str:
    name = _NAMES.get(value)
    if name is None:
        name = (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
        if len(_NAMES) < 64:
            _NAMES[value] = name
    return name


def encode(data: bytes, event: str | None = None) -> bytes:
    """One SSE event; ``data`` must hold no newline (compact JSON never does)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def plain_run(chunk: bytes, markers: tuple[bytes, ...]) -> int:
    """How many leading bytes of ``chunk`` are whole LF-separated events none of which holds one of
    ``markers`` (0 when none is, or when ``chunk`` holds a CR): a passthrough relays them unread."""
    if b"\r" in chunk:
        return 0
    end = chunk.rfind(b"\n\n") + 2
    for marker in markers:
        at = chunk.find(marker, 0, end)
        if at >= 0:
            end = min(end, chunk.rfind(b"\n\n", 0, at) + 2)  # where that event begins
    return end if end >= 2 else 0
