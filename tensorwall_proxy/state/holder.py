"""The process's state store, opened on the first request that needs it (DESIGN §14), and
``open_store``, which opens the configured backend; ``Opening`` does the same for the principals'
limit counters (``open_limits``), which live beside it (SQLite's ``limits.db``, or the same Redis).

A gateway that serves only chat never opens it, so it starts on a read-only filesystem or with its
Redis down. The first callers that need the store share one opening; when the opening fails they
get ``StoreError``, and so does every caller for the next ``RETRY_OPEN_SECONDS`` (a store that is
down is not hammered by every request); the first call after that tries again.

The holder keeps the ``StateConfig`` it was made with for as long as the process runs: a SIGHUP that
changes ``state:`` is logged and takes effect at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

from ..config import StateConfig
from ..observability import THROTTLE
from . import ErrorCounter, Store, StoreError

if TYPE_CHECKING:
    from ..limits import LimitStore

log = logging.getLogger(__name__)

# After a failed opening, callers get its error for this long before the next attempt.
RETRY_OPEN_SECONDS: Final = 1.0
# The bound on waiting for an opening still under way at shutdown.
CLOSE_SECONDS: Final = 5.0



class Closable(Protocol):
    """What an opened store offers its holder."""

    async def close(self) -> None:
        """Release its connections and threads."""
        ...


S = TypeVar("S", bound=Closable)
Opener = Callable[[StateConfig, ErrorCounter | None], Awaitable[S]]


async def open_store(config: StateConfig, on_error: ErrorCounter | None = None) -> Store:
    """Open the configured backend (its files or its connection pool, checked with one call);
    StoreError when it cannot. ``on_error`` counts each failed call, the opening included."""
    if config.backend == "redis":
        from .redis import RedisStore

        return await RedisStore.open(config, on_error)
    from .sqlite import SqliteStore

    return await SqliteStore.open(config, on_error)


async def open_limits(config: StateConfig, on_error: ErrorCounter | None = None) -> LimitStore:
    """Open the configured backend's limit counters (``limits.db``, or the Redis); StoreError when it cannot."""
    if config.backend == "redis":
        from .redis import RedisLimits

        return await RedisLimits.open(config, on_error)
    from .sqlite import SqliteLimits

    return await SqliteLimits.open(config, on_error)


class Opening(Generic[S]):
    """Opens one store once, when first asked, and closes it at shutdown."""

    def __init__(self, config: StateConfig | None, on_error: ErrorCounter | None, opener: Opener[S],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or StateConfig()
        self.on_error = on_error
        self._opener = opener
        self._clock = clock
        self._store: S | None = None
        self._opening: asyncio.Task[S] | None = None
        self._failed_at = -math.inf
        self._failure = ""
        self._closed = False

    @property
    def opened(self) -> S | None:
        """The store when it is open, else None (nothing is opened by asking)."""
        return self._store

    async def store(self) -> S:
        """The open store, opening it on the first call; StoreError when it cannot be opened (or
        could not within the last RETRY_OPEN_SECONDS)."""
        if self._store is not None:
            return self._store
        if self._closed:
            raise StoreError("the state store is closed (the gateway is shutting down)")
        if self._opening is None:
            if self._clock() - self._failed_at < RETRY_OPEN_SECONDS:
                raise StoreError(self._failure)
            self._opening = asyncio.create_task(self._open(), name="tensorwall-state-open")
            self._opening.add_done_callback(_retrieve)
        # Shielded: a caller that leaves (its client disconnected) does not cancel the others' opening.
        return await asyncio.shield(self._opening)

    async def close(self) -> None:
        """Close the store if it is open (an opening under way is waited for, within a bound)."""
        self._closed = True
        if self._opening is not None:
            with contextlib.suppress(StoreError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._opening), CLOSE_SECONDS)
        store, self._store = self._store, None
        if store is not None:
            await store.close()

    async def _open(self) -> S:
        config = self.config
        where = config.path if config.backend == "sqlite" else "the configured Redis"
        try:
            store = await self._opener(config, self.on_error)
        except StoreError as exc:
            self._failed_at = self._clock()
            self._failure = f"{exc} (the next attempt in {RETRY_OPEN_SECONDS:g}s at the earliest)"
            THROTTLE.warning(log, "state-open", "cannot open the state store (%s, %s): %s", config.backend, where, exc)
            raise
        finally:
            self._opening = None
        if self._closed:  # shutdown came while it opened
            await store.close()
            raise StoreError("the state store is closed (the gateway is shutting down)")
        self._store = store
        log.info("state store open: %s (%s)", config.backend, where)
        return store


class StateHolder(Opening[Store]):
    """Opens the configured store once, when first asked, and closes it at shutdown; keeps the
    shared secrets once known."""

    def __init__(self, config: StateConfig | None = None, on_error: ErrorCounter | None = None, *,
                 opener: Opener[Store] = open_store, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(config, on_error, opener, clock)
        self._secrets: dict[str, bytes] = {}  # a secret never changes once made: asked once per process

    async def secret(self, name: str) -> bytes:
        """The 32-byte secret under ``name``: derived from ``state.secret`` when the YAML sets one
        (no store needed), else the store's shared, generated one; kept once known."""
        known = self._secrets.get(name)
        if known is not None:
            return known
        if self.config.secret is not None:
            key = self.config.secret.reveal().encode("utf-8")
            made = hmac.new(key, b"tensorwall-proxy secret " + name.encode("utf-8"), hashlib.sha256).digest()
        else:
            made = await (await self.store()).secret(name)
        self._secrets[name] = made
        return made


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Every caller may have left before the opening failed: its error is then read here, not
    # reported by asyncio as never retrieved (it was logged by _open already).
    if not task.cancelled():
        task.exception()
