"""The only aiohttp client code: the pooled session, sending one call, and reading its answer.

Every aiohttp client exception is mapped here, at one boundary, to ``errors.UpstreamError``; the
raw exception is never logged or shown, since aiohttp's exceptions can carry request details.
Phase timeouts (first byte, idle, total) are clocks the relay runs around these calls; this
module applies only the connect timeout, which includes waiting for a pooled connection.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from .errors import UpstreamError
from .providers import UpstreamCall

# Bounded so a burst cannot open unbounded sockets; waiting for a free one counts as connecting.
POOL_LIMIT = 1024
# A non-streamed body larger than this is a broken upstream, not an answer.
MAX_BODY_BYTES = 256 * 1024 * 1024


def create_session() -> aiohttp.ClientSession:
    """One session per process, shared by every request (keep-alive pools per upstream host).

    No total timeout (aiohttp's default 300 s must never apply: the relay times phases itself),
    no cookies kept between callers, no proxy variables, no redirects (set per request).
    """
    connector = aiohttp.TCPConnector(limit=POOL_LIMIT, limit_per_host=0, ttl_dns_cache=300,
                                     keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=True,
        raise_for_status=False,
    )


class UpstreamResponse:
    """An upstream answer whose status and headers have arrived; the body is read on demand."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        """The whole body (non-streamed answers and error bodies)."""
        try:
            length = self._response.content_length
            if length is not None and length > MAX_BODY_BYTES:
                raise UpstreamError("server", 502, "Upstream response body is too large.")
            return await self._response.read()
        except aiohttp.ClientError as exc:
            raise _broken(exc) from None

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrive; ``b""`` at the end."""
        try:
            return await self._response.content.readany()
        except aiohttp.ClientError as exc:
            raise _broken(exc) from None

    def release(self) -> None:
        """Done with a complete answer: the connection may go back to the pool."""
        self._response.release()

    def close(self) -> None:
        """Abandon the answer: the connection is closed, never returned to the pool half-read."""
        self._response.close()


def _where(call: UpstreamCall) -> str:
    # Host and port only: a path or query could carry a model id we were asked not to echo.
    return f"{call.url.host}:{call.url.port}"


def _reason(exc: aiohttp.ClientConnectorError) -> str:
    # The OS error's text ("Connection refused", "Name or service not known") names no request detail.
    error = exc.os_error
    return (error.strerror if error is not None else None) or type(exc).__name__


def _broken(exc: BaseException) -> UpstreamError:
    return UpstreamError("server", 502, f"Upstream connection broke while reading the answer ({type(exc).__name__}).")


async def send(session: aiohttp.ClientSession, call: UpstreamCall, connect_timeout: float) -> UpstreamResponse:
    """Send one call and wait for the status line and headers."""
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout, sock_connect=connect_timeout)
    try:
        response = await session.request(
            call.method, call.url, data=call.body, headers=call.headers, timeout=timeout,
            allow_redirects=False,
        )
    except aiohttp.ClientConnectorError as exc:
        # Refused, DNS, TLS: the request provably never reached the upstream.
        raise UpstreamError("connect", 502, f"Could not connect to {_where(call)} ({_reason(exc)}).",
                            reached_upstream=False) from None
    except aiohttp.ConnectionTimeoutError:
        raise UpstreamError("connect", 504, f"Connecting to {_where(call)} took longer than {connect_timeout:g}s.",
                            reached_upstream=False) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError("connect", 502, f"The connection to {_where(call)} failed ({type(exc).__name__}).") from None
    return UpstreamResponse(response)
