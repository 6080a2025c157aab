"""Request bodies: reading one into memory within its time and size bounds, the per-process budget
for the bytes all bodies hold at once, and the nesting depth a body may have.

A body is read whole before the request counts as in flight, so a caller that trickles one holds
a connection and the bytes it has sent, never a slot of ``max_in_flight``. It is read into one
buffer sized by its Content-Length (no list of chunks joined into a copy, no second copy into
``bytes``), and a body that came with its head is taken as the very bytes the socket delivered.

No parsing here: api.py turns the bytes into JSON and drops them once parsed.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from .config import ServerConfig
from .errors import GatewayError

# The deepest nesting orjson writes (it reads up to 1,024): a body nested deeper could be parsed
# but never forwarded, so it is refused when read rather than failing where it is re-serialised.
MAX_DEPTH: Final = 254

Body = bytes | bytearray


class BodyBudget:
    """The bytes of request bodies held in memory across requests (``server.max_buffered_body_bytes``).

    A body's bytes are reserved before it is read when its Content-Length says how many there are,
    and as they arrive otherwise (chunked, or compressed: the decompressed size is unknown); they
    are given back when its request is done, since its parsed and translated forms live that long.
    """

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when the budget cannot hold them."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


class BodyAbandoned(TimeoutError):
    """Set on a body's stream that the gateway stops reading: it stalled for
    ``server.body_timeout_seconds``, or it is broken (a bad gzip) and the rest is worthless.

    A TimeoutError on purpose: aiohttp's drain of an unread body after the response takes it as a
    timeout and closes the connection quietly (any other error there is logged as unhandled).
    """


class _StallWatch:
    """Fails the body's stream once no data came for ``timeout`` seconds: one timer for the whole
    read, pushed back lazily (each read notes the time; the timer, when it fires early, re-arms)."""

    __slots__ = ("_content", "_deadline", "_handle", "_loop", "_timeout")

    def __init__(self, content: StreamReader, timeout: float) -> None:
        self._content = content
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + timeout
        self._handle = self._loop.call_at(self._deadline, self._check)

    def fed(self) -> None:
        self._deadline = self._loop.time() + self._timeout

    def _check(self) -> None:
        if self._loop.time() < self._deadline:
            self._handle = self._loop.call_at(self._deadline, self._check)
        else:
            self._content.set_exception(BodyAbandoned())

    def cancel(self) -> None:
        self._handle.cancel()


def too_large(limit: int) -> GatewayError:
    """413: the body is larger than ``server.max_body_bytes``."""
    return GatewayError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


def _over_budget() -> GatewayError:
    return GatewayError(503, "The gateway holds as many request bodies as it may at once; retry shortly.",
                        type="server_error", code="overloaded", retry_after=1)


async def read_body(request: web.Request, budget: BodyBudget, server: ServerConfig) -> tuple[Body, int]:
    """The whole body, and the bytes reserved for it in ``budget`` (the caller gives them back when
    the request is done). 413 past ``max_body_bytes``, 503 past the budget, 408 when it stalls for
    ``body_timeout_seconds``, 400 when it is not a valid body (a broken gzip, a short chunk); on any
    failure nothing stays reserved."""
    content = request.content
    limit = server.max_body_bytes
    length = request.content_length
    # aiohttp decompresses a Content-Encoding itself: then the bytes read are not Content-Length's.
    if hdrs.CONTENT_ENCODING in request.headers:
        length = None
    elif length is not None and length > limit:
        raise too_large(limit)
    if content.is_eof() and length is not None:
        # The common case: the body came with its head and is all here. No copy when it came in
        # one piece; the bytes are already held, so the budget only counts them.
        try:
            body = content.read_nowait(-1)
        except (RequestPayloadError, HttpProcessingError) as exc:
            content.set_exception(BodyAbandoned())
            raise _unreadable(exc) from None
        if not budget.take(len(body)):
            raise _over_budget()
        return body, len(body)
    reserved = 0
    if length is not None:
        if not budget.take(length):
            raise _over_budget()
        reserved = length
    watch = _StallWatch(content, server.body_timeout_seconds)
    try:
        if length is not None:
            buffer = bytearray(length)
            filled = await _read_into(content, buffer, watch)
            if filled != length:  # aiohttp ends a short body with an error; this is a backstop
                raise GatewayError(400, "The request body is shorter than its Content-Length.",
                                   code="invalid_body")
            return buffer, reserved
        buffer = bytearray()
        while chunk := await content.readany():
            watch.fed()
            if len(buffer) + len(chunk) > limit:
                raise too_large(limit)
            if not budget.take(len(chunk)):
                raise _over_budget()
            reserved += len(chunk)
            buffer += chunk
        return buffer, reserved
    except BodyAbandoned:
        budget.give(reserved)
        raise GatewayError(408, f"No part of the request body arrived for {server.body_timeout_seconds:g}s.",
                           type="invalid_request_error", code="request_timeout") from None
    except (RequestPayloadError, HttpProcessingError) as exc:
        budget.give(reserved)
        content.set_exception(BodyAbandoned())
        raise _unreadable(exc) from None
    except BaseException:
        budget.give(reserved)
        raise
    finally:
        watch.cancel()


async def _read_into(content: StreamReader, buffer: bytearray, watch: _StallWatch) -> int:
    """Fill ``buffer`` from the stream; how many bytes came (fewer only if the stream ended early)."""
    view = memoryview(buffer)
    filled = 0
    try:
        while chunk := await content.readany():
            watch.fed()
            end = filled + len(chunk)
            if end > len(buffer):  # more than Content-Length: aiohttp's parser never lets this happen
                raise GatewayError(400, "The request body is longer than its Content-Length.", code="invalid_body")
            view[filled:end] = chunk
            filled = end
    finally:
        view.release()  # the buffer goes on to the JSON parser; an export would pin it
    return filled


def _unreadable(exc: BaseException) -> GatewayError:
    cause = exc.__cause__ if isinstance(exc, RequestPayloadError) else exc
    if isinstance(cause, ContentEncodingError) or isinstance(exc, ContentEncodingError):
        return GatewayError(400, "The request body could not be decompressed as its Content-Encoding says.",
                            code="invalid_body")
    return GatewayError(400, "The request body is not valid HTTP (a broken length or chunk).", code="invalid_body")


def too_deep(raw: Body, value: Any) -> bool:
    """Whether parsed JSON nests deeper than ``MAX_DEPTH``. Free for almost every body: nesting that
    deep needs that many opening brackets, counted first at C speed; only bodies with more are walked."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False
