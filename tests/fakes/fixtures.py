"""Fixtures for the fake upstream's own tests: a fresh fake on the test's loop, and a client session.

The gateway's tests share one fake on a server thread (tests/conftest.py); the fake's own tests
want a fresh one per test, on their own event loop, which these give them. A test module takes
them with ``from tests.fakes.fixtures import fake, http``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.upstream import FakeUpstream


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A fake upstream of its own, started on 127.0.0.1 for one test."""
    upstream = FakeUpstream(delay=0.2)
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client for talking to the fake directly."""
    async with aiohttp.ClientSession() as session:
        yield session
