"""The bare relay: the least an aiohttp hop can do, the yardstick the proxy's targets are ratios against.

`bench.py --serve-relay PORT --relay-to URL` runs it in a subprocess on the proxy's CPU. It takes
any POST, sends the same path, headers and bytes to the upstream over a pooled session (pooled like
the proxy's, so it pays the same per-request costs, no more), and answers with the upstream's
status and body, a stream chunk by chunk as it arrives. No parsing, no routing, no translation:
what is left is the second loopback round trip and aiohttp's own work on both sides of a hop. It
is part of every run unless `--no-relay`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from .eventstream import EVENTSTREAM

RELAY_SESSION: Final = web.AppKey("relay_session", aiohttp.ClientSession)
# Headers that describe one connection or one body, not the request: aiohttp sets its own.
_HOP_HEADERS: Final = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding"})
_STREAMED: Final = frozenset({"text/event-stream", EVENTSTREAM})


def bare_relay_app(upstream_base: str) -> web.Application:
    """Same path, same bytes, same headers to the upstream; the answer back as it arrives."""

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0)
        app[RELAY_SESSION] = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))
        yield
        await app[RELAY_SESSION].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        # The path as received, still percent-encoded (`…v1%3A0` stays as it came).
        url = URL(upstream_base + request.path_qs, encoded=True)
        async with request.app[RELAY_SESSION].post(url, data=body, headers=headers) as upstream:
            if upstream.content_type not in _STREAMED:
                return web.Response(status=upstream.status, body=await upstream.read(),
                                    content_type=upstream.content_type)
            response = web.StreamResponse(status=upstream.status, headers={"Content-Type": upstream.content_type})
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.router.add_post("/{tail:.*}", relay)
    return app
