"""The listener: how many connections may be open, how long and how large a request head may be,
and what a caller sees when the HTTP parser refuses one (DESIGN §4's connection bounds).

aiohttp bounds each header line and the number of headers, but neither the time a head may take
(its keep-alive timer starts at accept, is not reset by trickled bytes and defaults to an hour)
nor the size of the whole head, nor the number of connections. ``Connection`` adds those three on
top of aiohttp's request handler; ``make_runner`` builds the runner with every bound from
``server.*``, and is what both ``serve`` and the tests start the gateway with.

Costs on the hot path: one comparison per ``data_received``, and nothing per request beyond
it while heads arrive whole (the usual case); a timer is armed only at accept and when a
head arrives in pieces. Request bodies are not this module's: ``bodies.py`` reads them, with their
own timeout, inside the request's handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from .api import GATEWAY
from .config import ServerConfig
from .errors import GatewayError
from .observability import THROTTLE

log = logging.getLogger("tensorwall_proxy")

# Header lines in one request head. Clients send a dozen or two; aiohttp's default is 128.
MAX_HEADERS: Final = 64
# What a request line or header costs beyond its bytes in the count of a whole head: the
# separators (": ", CRLF) aiohttp's parsed message no longer holds.
_LINE_OVERHEAD: Final = 4
# After answering a refused head: how long the client's further bytes are read and dropped before
# the socket closes. Closing with unread bytes sends a RST, which can destroy the answer unread.
LINGER_SECONDS: Final = 1.0

Closed = Callable[[str], None]
"""Told why the listener closed a connection before serving it (a metric label)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection bounds of ``server.*``."""

    header_timeout: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def from_config(cls, server: ServerConfig) -> Limits:
        return cls(server.header_timeout_seconds, server.max_header_bytes, server.max_connections)


def _error_bytes(error: GatewayError, reason: str) -> bytes:
    """A whole HTTP/1.1 response for an error, written straight to the socket (no request to answer)."""
    body = error.body()
    head = (f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def head_too_large(limit: int) -> GatewayError:
    """431: the request head is larger than ``server.max_header_bytes`` or has too many lines."""
    return GatewayError(431, f"The request head is larger than {limit} bytes or has more than {MAX_HEADERS} "
                        "header lines.", code="request_header_fields_too_large")


_HEAD_TIMEOUT: Final = _error_bytes(
    GatewayError(408, "The request head did not arrive in time.", type="invalid_request_error",
                 code="request_timeout"), "Request Timeout")


class Connection(RequestHandler):
    """aiohttp's request handler with a deadline and a size bound for every request head.

    The head timer runs from accept until the first head is parsed, and from the first byte of
    each later head until it is complete; the time a keep-alive connection sits idle between
    requests is aiohttp's ``keepalive_timeout`` (``server.keepalive_seconds``). Bytes that arrive
    while a request body is still being read are the body's, and are not counted as head bytes.
    """

    __slots__ = ("_body", "_closed", "_discarding", "_head_bytes", "_head_timer", "_limits")

    def __init__(self, manager: Listener, *, limits: Limits, closed: Closed, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._closed = closed
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of a head not yet complete
        self._body: StreamReader | None = None  # the body of the last head parsed
        self._discarding = False  # refused: what arrives now is read and dropped until the close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, Listener) and manager.open_connections() >= self._limits.max_connections:
            # Closed before aiohttp knows of it: no task, no parser state, nothing to shut down.
            self._manager = None
            self._force_close = True
            self._closed("max_connections")
            transport.close()
            return
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close or self._discarding:
            return
        body = self._body
        # Judged before parsing: the read that completes a body is the body's, not a head's.
        in_body = body is not None and not body.is_eof()
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            # A head is complete: its timer is done, and what follows is its body.
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            counted = self._head_bytes
            self._head_bytes = 0
            if not self._messages:
                return
            message, self._body = self._messages[-1]
            if counted + len(data) > self._limits.max_header_bytes and not isinstance(message, _ErrInfo):
                self._check_whole_head(message)
            return
        if in_body:
            return  # body bytes: bodies.py times their reads
        self._head_bytes += len(data)
        if self._head_bytes > self._limits.max_header_bytes:
            self._refuse(_error_bytes(head_too_large(self._limits.max_header_bytes), "Request Header Fields Too Large"),
                         "header_too_large")
        elif self._head_timer is None and self._idle():
            self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_timed_out)

    def _check_whole_head(self, message: Any) -> None:
        """A head that arrived with more bytes than the bound in one read: measure it, and answer
        431 instead of serving it when it is too large. Rare: only reads that large get here."""
        size = len(message.path) + 16 + sum(len(name) + len(value) + _LINE_OVERHEAD
                                            for name, value in message.raw_headers)
        if size > self._limits.max_header_bytes:
            self._closed("header_too_large")
            error = LineTooLong(b"request head", self._limits.max_header_bytes)
            self._messages[-1] = (_ErrInfo(status=431, exc=error, message=error.message), EMPTY_PAYLOAD)

    def _idle(self) -> bool:
        return not self._request_in_progress and not self._messages

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport is None or self._force_close or not self._idle():
            return
        if self._head_bytes:
            self._refuse(_HEAD_TIMEOUT, "header_timeout")
        else:
            # Nothing of a request arrived: close quietly, as an idle keep-alive connection is.
            self._closed("header_timeout")
            self.force_close()

    def _refuse(self, response: bytes, reason: str) -> None:
        """Answer with ``response`` and close, unless a response is under way (then only close)."""
        self._closed(reason)
        transport = self.transport
        if transport is None or not self._idle():
            self.force_close()
            return
        transport.write(response)
        if transport.can_write_eof():
            transport.write_eof()
        self._discarding = True
        self._loop.call_later(LINGER_SECONDS, self.force_close)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines (an exception while it drains or writes), at most once a minute per kind."""
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and args:
            THROTTLE.error(log, exc, str(args[0]), *args[1:])
        else:
            super().log_exception(*args, **kw)

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """What the parser refused (or a handler failed with), in OpenAI's error shape; a caller's
        malformed request is not an error of the gateway's, so it is not logged as one."""
        if status >= 500:
            # A handler failed outside the endpoint's own error handling: a bug of ours, logged
            # like the endpoint's (at most once a minute per kind).
            if exc is not None:
                THROTTLE.error(log, exc, "unhandled error serving %s %s", request.method, request.path)
            error = GatewayError(status, "Internal gateway error.", type="server_error", code="internal_error")
        elif status == 431 or isinstance(exc, LineTooLong) or "Too many headers" in (message or ""):
            error = head_too_large(self._limits.max_header_bytes)
        else:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Bad Request"
            error = GatewayError(status, f"The request is not valid HTTP: {phrase}.", code="invalid_http")
        response = web.Response(status=error.status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


class Listener(web.Server):
    """aiohttp's low-level server, making a ``Connection`` for each accepted socket."""

    def __init__(self, made: web.Server, limits: Limits, closed: Closed, handler_args: dict[str, Any]) -> None:
        super().__init__(made.request_handler, request_factory=made.request_factory,
                         handler_cancellation=made.handler_cancellation, **handler_args)
        self.limits = limits
        self.closed = closed
        self.handler_args = handler_args

    def open_connections(self) -> int:
        return len(self._connections)

    def __call__(self) -> RequestHandler:
        return Connection(self, loop=asyncio.get_running_loop(), limits=self.limits, closed=self.closed,
                          **self.handler_args)


class GatewayRunner(web.AppRunner):
    """An ``AppRunner`` whose server is a ``Listener``."""

    def __init__(self, app: web.Application, limits: Limits, closed: Closed, handler_args: dict[str, Any],
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._closed = closed
        self._handler_args = handler_args

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # runs the app's startup and freezes it
        return Listener(made, self._limits, self._closed, self._handler_args)


def _ignore(reason: str) -> None:
    pass


def make_runner(app: web.Application, server: ServerConfig, *, shutdown_timeout: float) -> web.AppRunner:
    """The runner for the gateway's app with every connection bound of ``server.*`` applied; the
    connections it closes before serving them are counted in the app's metrics."""
    gateway = app.get(GATEWAY)  # None for an app that is not the gateway's (a test's own upstream)
    metrics = gateway.metrics if gateway is not None else None
    closed: Closed = metrics.connection_closed if metrics is not None else _ignore
    handler_args: dict[str, Any] = {
        "access_log": None,
        "keepalive_timeout": server.keepalive_seconds,
        # One line or header may take the whole head's budget; Connection bounds their sum.
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": MAX_HEADERS,
    }
    return GatewayRunner(app, Limits.from_config(server), closed, handler_args, handler_cancellation=True,
                         access_log=None, shutdown_timeout=shutdown_timeout)
