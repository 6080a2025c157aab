"""OpenAI's Responses wire as the providers that speak it natively return it (DESIGN §12, §14).

Every type of OpenAI's wire that passes ``/v1/responses`` through (openai, azure, and any type a
provider's YAML declares ``responses`` for) gets its answers read here: the stream decoder that
relays the upstream's events as they came while deciding the commit point, reading the usage
from the terminal event and turning an in-band failure before the commit point into an
``UpstreamError``; and the reader of a whole answer's usage and id.

The commit point (DESIGN §14): a stream commits at its first text, refusal, tool-argument or
reasoning delta, a tool-call item added, or a terminal event. ``response.created`` /
``in_progress`` / ``queued``, an item added with no content and an empty part added are held.

Pure: no I/O, no aiohttp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import orjson

from ..errors import FailureKind, UpstreamError, openai_error_fields
from ..sse import SseEvent, encode, plain_run
from .contract import NativeAnswer, NativeState
from .shapes import load_object

# Events held with the commit point: the Response announced, an empty part opened.
_HELD: Final = frozenset({"response.created", "response.in_progress", "response.queued",
                          "response.content_part.added", "response.reasoning_summary_part.added"})
# Events that end a stream, each with the whole Response.
TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
# Items whose `output_item.added` commits even when empty: the client must see a call begin.
_CALL_ITEMS: Final = frozenset({"function_call", "custom_tool_call"})
# Markers of the events that need a look after the commit point (the terminal ones, an `error`);
# any other event goes out as it came, unparsed. A marker inside content is only a false alarm:
# that event takes the parsed path.
_MARKERS: Final = (b"response.completed", b"response.incomplete", b"response.failed", b'"error"')
_SEQUENCE: Final = re.compile(rb'"sequence_number"\s*:\s*(\d{1,15})(?!\d)')
# Sequence numbers past this are an upstream's nonsense, not counted (the next one must still encode).
MAX_SEQUENCE: Final = 2**53


def pivot_usage(usage: Any) -> dict[str, Any] | None:
    """A Response's usage in the pivot's shape (what the access log and the metrics count)."""
    if not isinstance(usage, dict):
        return None
    return {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens"),
            "total_tokens": usage.get("total_tokens")}


def in_band_error(provider: str, error: Any, fallback_message: str) -> UpstreamError:
    """An error an upstream reported inside a stream (an ``error`` event, a failed Response's
    ``error``), classified like its HTTP equivalent (DESIGN §14): overloaded 503, rate limits and
    quota 429, server and API errors 502 (all may fall back); any other named failure is the
    request's own (400, no fallback)."""
    message, type_, _, code = openai_error_fields({"error": error} if isinstance(error, dict) else error)
    words = " ".join(w for w in (code, type_) if w).lower()
    kind: FailureKind
    if "overloaded" in words:
        kind, status = "overloaded", 503
    elif "rate_limit" in words or "quota" in words:
        kind, status = "rate_limited", 429
    elif not words or any(w in words for w in ("server_error", "api_error", "internal", "timeout", "unavailable")):
        kind, status = "server", 502
    else:
        kind, status = "bad_request", 400
    return UpstreamError(kind, status, message or fallback_message, provider=provider, code=code,
                         type=type_ if status < 500 else None)


class ResponsesPassthrough(NativeState):
    """The native decoder for a Responses stream: each upstream event goes to the client unchanged.

    Before the commit point every event is parsed (a handful: the Response announced, an item and
    a part opened); after it, ``split_plain`` hands back whole runs of events as the upstream's
    own bytes, and only the terminal events and errors are parsed, for the usage and the failure.
    """

    __slots__ = ()

    def feed(self, event: SseEvent) -> list[bytes]:
        parsed = load_object(event.data, self._provider, "an event")
        kind = parsed.get("type")
        response = parsed.get("response")
        if isinstance(response, dict):
            if self.opening is None:
                self.opening = response
            if self.response_id is None and isinstance(response.get("id"), str):
                self.response_id = response["id"]
        if kind == "error":
            # OpenAI's `error` event carries code and message at the top; some servers nest them.
            nested = parsed.get("error")
            error = nested if isinstance(nested, dict) else {
                name: parsed.get(name) for name in ("code", "message", "param")}
            raise in_band_error(self._provider, error, f"Upstream '{self._provider}' failed mid-stream.")
        if kind in TERMINAL:
            response = response if isinstance(response, dict) else {}
            if kind == "response.failed" and not self.visible:
                # Before the commit point a failure may still fall back (DESIGN §14).
                raise in_band_error(self._provider, response.get("error"),
                                    f"Upstream '{self._provider}' failed the response.")
            self.usage = pivot_usage(response.get("usage"))
            self.done = self.visible = True
        elif not self.visible:
            self.visible = _commits(kind, parsed)
        # Counted only for events the client gets: an error raised above is not relayed.
        number = parsed.get("sequence_number")
        if isinstance(number, int) and not isinstance(number, bool) and self.sequence <= number < MAX_SEQUENCE:
            self.sequence = number + 1
        return [encode(event.data, event.event)]

    def split_plain(self, chunk: bytes) -> tuple[bytes, bytes]:
        """Past the commit point, the leading whole events of ``chunk`` that hold no terminal event
        and no error: they go out as the upstream sent them, and only their last sequence number
        is read."""
        end = plain_run(chunk, _MARKERS) if self.visible and not self.done else 0
        if not end:
            return b"", chunk
        plain = chunk[:end] if end < len(chunk) else chunk
        at = plain.rfind(b'"sequence_number"')
        if at >= 0:
            match = _SEQUENCE.match(plain, at)
            if match is not None:
                self.sequence = max(self.sequence, min(int(match.group(1)) + 1, MAX_SEQUENCE))
        return plain, chunk[end:]

    def close(self) -> list[bytes]:
        if not self.done:
            raise UpstreamError("server", 502, f"Upstream '{self._provider}' ended the stream before its "
                                               "terminal event.", provider=self._provider)
        return []


def _commits(kind: Any, event: Mapping[str, Any]) -> bool:
    """Whether an event (not terminal) is the commit point: anything but what is held with it."""
    if kind in _HELD:
        return False
    if kind == "response.output_item.added":
        item = event.get("item")
        if not isinstance(item, dict):
            return False
        return item.get("type") in _CALL_ITEMS or bool(item.get("content") or item.get("summary"))
    return True


def read_answer(provider: str, body: bytes) -> NativeAnswer:
    """A whole Response relayed as it came: its usage in the pivot's shape and its id; ValueError
    when it is not a Response."""
    parsed = orjson.loads(body)
    if not isinstance(parsed, dict) or not isinstance(parsed.get("output"), list):
        raise ValueError(f"upstream '{provider}' sent an answer that is not a Response")
    response_id = parsed.get("id")
    return NativeAnswer(pivot_usage(parsed.get("usage")), response_id if isinstance(response_id, str) else None)
