"""The Redis backend of the state store: every instance on every host sees the same values (DESIGN §13).

Through ``redis.asyncio`` with a bounded pool per process (a call waits for a free connection
within its own timeout, never longer). Every key is under ``state.key_prefix`` (default ``tw:``),
so one Redis can serve other applications, or several gateways with prefixes of their own.

An abandoned call is not retried (DESIGN §14): redis-py's retries are off, and a call cancelled
past ``state.timeout_ms`` has its connection closed by redis-py (the answer it may still send must
not be read as the answer to the next command on that connection); the next call takes a new one.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import ErrorCounter
from .guard import CallGuard

if TYPE_CHECKING:
    from ..config import StateConfig

# Connections per process: calls are short, so a few dozen serve thousands of requests a second;
# past it a call waits for one (within its timeout) rather than open more.
POOL_SIZE: Final = 32
SECRET_BYTES: Final = 32
# Keys renewed per pipeline round trip: a stored conversation's chain is at most 256 turns.
TOUCH_CHUNK: Final = 512


def _milliseconds(ttl_seconds: float) -> int:
    if not ttl_seconds > 0:
        raise ValueError(f"a time to live must be positive, got {ttl_seconds!r}")
    return max(1, math.ceil(ttl_seconds * 1000))


class RedisStore:
    """The state store in Redis (see the module's docstring)."""

    backend = "redis"

    def __init__(self, client: Redis, prefix: str, guard: CallGuard) -> None:
        self._client = client
        self._prefix = prefix
        self._guard = guard

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> RedisStore:
        """A pool on ``state.url``, checked with one PING; StoreError when Redis does not answer."""
        guard = CallGuard(cls.backend, config.timeout_seconds, (RedisError, OSError), on_error)
        if config.url is None:
            raise guard.fail("open", "state.url is not set")
        seconds = config.timeout_seconds
        try:
            pool = BlockingConnectionPool.from_url(
                config.url.reveal(), max_connections=POOL_SIZE, timeout=seconds, socket_timeout=seconds,
                socket_connect_timeout=seconds, retry=Retry(NoBackoff(), 0), retry_on_error=[],
                health_check_interval=0)
        except ValueError as exc:  # a URL config.py let through that redis-py reads otherwise
            raise guard.fail("open", f"state.url: {type(exc).__name__}") from None
        store = cls(Redis(connection_pool=pool), config.key_prefix, guard)
        try:
            await guard.run("open", store._client.ping())
        except BaseException:
            await store.close()
            raise
        return store

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when there is none or it expired."""
        value = await self._guard.run("get", self._client.get(self._prefix + key))
        if value is None or isinstance(value, bytes):
            return value
        return value.encode()  # only with decode_responses, which this client never sets

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """SET with PX: the value and its expiry in one command."""
        await self._guard.run("put", self._client.set(self._prefix + key, value, px=_milliseconds(ttl_seconds)))

    async def delete(self, key: str) -> bool:
        """DEL; True when the key existed (Redis never counts an expired key)."""
        removed = await self._guard.run("delete", self._client.delete(self._prefix + key))
        return bool(removed)

    async def touch(self, keys: Sequence[str], ttl_seconds: float) -> None:
        """PEXPIRE for every key in one pipeline (a round trip per TOUCH_CHUNK keys); a key that
        does not exist stays absent."""
        px = _milliseconds(ttl_seconds)
        for start in range(0, len(keys), TOUCH_CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[start:start + TOUCH_CHUNK]:
                pipe.pexpire(self._prefix + key, px)
            await self._guard.run("touch", pipe.execute())

    async def secret(self, name: str) -> bytes:
        """SET NX then GET: the first instance to ask makes it, every other one reads the same."""
        key = f"{self._prefix}secret:{name}"
        candidate = secrets.token_bytes(SECRET_BYTES)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, candidate, nx=True)
        pipe.get(key)
        _, value = await self._guard.run("secret", pipe.execute())
        if not isinstance(value, bytes) or len(value) != SECRET_BYTES:
            raise self._guard.fail("secret", f"{key} holds something that is not a {SECRET_BYTES}-byte secret")
        return value

    async def close(self) -> None:
        """Close the pool's connections; every call after this fails."""
        self._guard.closed = True
        await self._client.aclose()
        await self._client.connection_pool.disconnect()
