"""The state store's fixtures: a store of either backend, opened for one test and closed after it.

Redis is tests/conftest.py's ``redis_url``, with a ``key_prefix`` of each test's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from tensorwall_proxy.config import Secret, StateConfig
from tensorwall_proxy.observability import Metrics
from tensorwall_proxy.state import Store
from tensorwall_proxy.state.holder import open_store

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
