"""The state store's fixtures: a store of either backend, opened for one test and closed after it.

Redis is the one at ``REDIS_URL`` (default redis://127.0.0.1:6379/0), shared with whatever else uses
it: each test writes under a key prefix of its own and deletes only its own keys at the end; nothing
here stops or flushes it. Without a Redis that answers, the Redis tests are skipped, unless
``TENSORWALL_REQUIRE_REDIS=1`` (CI), when they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import generate_latest

from tensorwall_proxy.config import Secret, StateConfig
from tensorwall_proxy.observability import Metrics
from tensorwall_proxy.state import Store
from tensorwall_proxy.state.holder import open_store

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
BACKENDS = ("sqlite", "redis")


class Errors:
    """The store's error callback for a test: every (backend, operation) it was told of."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, backend: str, operation: str) -> None:
        self.seen.append((backend, operation))


def state_errors(metrics: Metrics, backend: str, operation: str) -> float:
    """``tensorwall_state_errors_total{backend,operation}`` as a scrape shows it (0 when absent)."""
    needle = f'tensorwall_state_errors_total{{backend="{backend}",operation="{operation}"}} '
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(needle):
            return float(line[len(needle):])
    return 0.0


@pytest.fixture(scope="session")
def redis_url() -> str:
    """REDIS_URL when a Redis answers there; else the test is skipped (failed under TENSORWALL_REQUIRE_REDIS=1)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        message = f"no Redis answers at REDIS_URL ({type(exc).__name__}: {exc})"
        if os.environ.get("TENSORWALL_REQUIRE_REDIS") == "1":
            pytest.fail(message + " and TENSORWALL_REQUIRE_REDIS=1")
        pytest.skip(message)
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis key prefix of this test's own; its keys (and only they) are deleted after it."""
    prefix = f"twtest:{secrets.token_hex(6)}:"
    yield prefix
    if "redis_url" not in request.fixturenames:
        return  # a SQLite test: it never reached Redis
    keys = redis_keys(prefix)
    if keys:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.delete(*keys)
        finally:
            client.close()


def redis_keys(prefix: str) -> list[bytes]:
    """The keys in the shared Redis under ``prefix`` (a test's own)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        return sorted(client.scan_iter(match=prefix + "*", count=1000))
    finally:
        client.close()


@pytest.fixture(params=BACKENDS)
def state_config(request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str) -> StateConfig:
    """A StateConfig for each backend: SQLite in this test's directory, Redis under its own prefix."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return StateConfig(backend="redis", url=Secret(url), key_prefix=key_prefix, timeout_ms=2000)
    # Generous bounds: these tests are about what the store does, not how fast (a loaded CI host).
    return StateConfig(backend="sqlite", path=str(tmp_path / "state"), timeout_ms=2000)


OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture
async def open_state(state_config: StateConfig) -> AsyncIterator[OpenStore]:
    """Open stores of the test's backend (``**changes`` to its StateConfig); all closed after the test."""
    opened: list[Store] = []

    async def start(on_error: Callable[[str, str], None] | None = None, **changes: Any) -> Store:
        store = await open_store(replace(state_config, **changes), on_error)
        opened.append(store)
        return store

    yield start
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_state: OpenStore) -> Store:
    """An open store of the test's backend."""
    return await open_state()
