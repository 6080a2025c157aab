"""Builds the aiohttp Application: routes, and the cleanup context that owns the session.

Shared resources live in the application's lifecycle (aiohttp ``cleanup_ctx``), never in module
globals: the upstream ``ClientSession`` is created when the app starts and closed when it stops; the
state store is opened by the first request that needs it and closed when the app stops.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from aiohttp import web

from . import api, upstream
from .auth import GatewayKeys
from .bodies import BodyBudget
from .config import Config
from .dialects import catalog
from .health import RetryBudget
from .hosts import HostGuard
from .limits import Limiter
from .observability import metrics_from_environment
from .relay import Gateway, Table
from .router import LLMRouter
from .state.holder import Opening, StateHolder, open_limits


def build_table(config: Config) -> Table:
    """The request-facing view of a configuration: router, gateway keys and the catalog of models."""
    router = LLMRouter.from_config(config)
    routes = {name: route.endpoints[0].provider for name, route in config.routes.items() if route.endpoints}
    # Glob entries of `models:` (`claude-*`, `*`) gate names; they are not models to list.
    provider_models = {name: tuple(m for m in p.models if not any(c in m for c in "*?["))
                       for name, p in config.providers.items() if p.models}
    return Table(config, router, catalog(routes, provider_models, int(time.time())), GatewayKeys(config.gateway_keys))


def apply_config(app: web.Application, config: Config) -> None:
    """Swap a running app to a new, already validated configuration (SIGHUP).

    Requests in flight keep the table they started with; new ones get the new routes, providers,
    keys, timeouts, retries, and `server.allowed_hosts`/`allowed_origins`; the rest of `server.*`
    (address, body and connection bounds) takes a restart.
    """
    app[api.GATEWAY].table = build_table(config)


async def _session_context(app: web.Application) -> AsyncIterator[None]:
    gateway = app[api.GATEWAY]
    gateway.session = upstream.create_session()
    gateway.ready = True
    yield
    gateway.ready = False
    gateway.ledger.flush()  # the last requests' log lines and counts
    await gateway.session.close()


async def _state_context(app: web.Application) -> AsyncIterator[None]:
    # Nothing opens here (the first request that needs the store does); closed last, after the drain.
    yield
    gateway = app[api.GATEWAY]
    await gateway.limits.close()
    await gateway.state.close()


def build_app(config: Config, bind: str | None = None) -> web.Application:
    """The gateway as an aiohttp Application for one configuration, served on ``bind``
    (default ``server.host``: the Host rule of gateway auth off names it)."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[api.BUDGET] = BodyBudget(config.server.max_buffered_body_bytes)
    app[api.HOSTS] = HostGuard(config.server.host if bind is None else bind)
    retries = config.retries
    metrics = metrics_from_environment()
    app[api.GATEWAY] = Gateway(build_table(config),
                               budget=RetryBudget(retries.budget_ratio, retries.budget_min_per_second),
                               metrics=metrics, state=StateHolder(config.state, metrics.state_error),
                               limits=Limiter(Opening(config.state, metrics.state_error, open_limits),
                                              config.state.fail_mode, metrics.limit_fallback))
    app[api.METRICS_ELSEWHERE] = config.server.metrics_port is not None
    app.cleanup_ctx.append(_state_context)  # cleanup contexts close in reverse: the store after the session
    app.cleanup_ctx.append(_session_context)
    api.add_routes(app)
    return app


def build_metrics_app(app: web.Application) -> web.Application:
    """The metrics listener's application (``server.metrics_port``): /metrics of ``app``'s gateway."""
    metrics_app = web.Application()
    # The same gateway, and the same Host/Origin rule: a page must not read metrics by rebinding either.
    metrics_app[api.GATEWAY] = app[api.GATEWAY]
    metrics_app[api.HOSTS] = app[api.HOSTS]
    metrics_app[api.BUDGET] = app[api.BUDGET]
    api.add_metrics_routes(metrics_app)
    return metrics_app
