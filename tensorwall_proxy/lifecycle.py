"""Runs the gateway: the event loop (uvloop where installed), the listener, and a clean exit on SIGINT/SIGTERM.

Workers, the SIGTERM drain, SIGHUP reload and systemd notify/watchdog build on this module.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from .app import build_app
from .config import Config, is_loopback

log = logging.getLogger("tensorwall_proxy")


class UnsafeBind(Exception):
    """Gateway auth is off and the address is not loopback."""


def check_bind(config: Config, host: str, allow_no_key: bool) -> None:
    """Refuse to serve without gateway keys on anything but loopback, unless told explicitly."""
    if config.gateway_keys:
        return
    if is_loopback(host):
        log.warning("gateway auth is off (gateway_keys: []); listening on loopback %s only", host)
        return
    if not allow_no_key:
        raise UnsafeBind(
            f"gateway auth is off (gateway_keys: []) and {host} is not a loopback address: set gateway_keys, "
            "or pass --no-gateway-key to serve without them"
        )
    log.warning("gateway auth is off (gateway_keys: []) on %s: anyone who reaches it can use it", host)


def install_uvloop() -> None:
    """Use uvloop's event loop when it is installed: it halves the per-request cost of the loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def serve(config: Config, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM, then close the listener and exit."""
    install_uvloop()
    app = build_app(config)
    log.info("tensorwall-proxy listening on http://%s:%d (config %s)", host, port, config.source)
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        print=None,
        handle_signals=True,
        # A client that disconnects cancels its handler, and with it the upstream request.
        handler_cancellation=True,
        shutdown_timeout=config.server.drain_seconds,
    )
