"""The state store (DESIGN §13, §14): the only state shared between processes and hosts.

Two backends behind one contract: SQLite (the default; one host, shared by ``--workers``; ``sqlite.py``)
and Redis (many hosts; ``redis.py``). The relay and the dialects see only ``Store``, which they get
from ``await gateway.store()`` (``holder.py`` opens it on the first call); which backend serves is
the configuration's ``state.backend``. Keys are plain strings (``resp:<id>``, ``aff:<id>``; ``secret:``
is the secrets' own); a backend adds its own namespace (the Redis key prefix, the SQLite file), so
callers never do.

Every call is bounded by ``state.timeout_ms``; a call that fails or runs past it raises
``StoreError`` (and is counted in ``tensorwall_state_errors_total``). What a failure means is the
caller's business: a request that needs a stored conversation is 503, one that only stores is
served (DESIGN §14).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

# Told of each failed call: (backend, operation); ``Metrics.state_error`` is the gateway's.
ErrorCounter = Callable[[str, str], None]


class StoreError(Exception):
    """A store call failed or ran past ``state.timeout_ms``; the message is safe to log, never
    shown to a caller as it is."""


class Store(Protocol):
    """What the gateway keeps across processes: values with a time to live, and shared secrets."""

    backend: str  # "sqlite" or "redis": the metric label and the log's word

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when there is none or it expired."""
        ...

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store ``value`` under ``key`` (replacing any), expiring ``ttl_seconds`` from now."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed (and had not expired)."""
        ...

    async def touch(self, keys: Sequence[str], ttl_seconds: float) -> None:
        """Renew the time to live of the ``keys`` that exist (one call, however many)."""
        ...

    async def secret(self, name: str) -> bytes:
        """A 32-byte secret under ``name``, made from the CSPRNG the first time any process asks
        and the same for every worker and instance from then on (an atomic get-or-create)."""
        ...

    async def close(self) -> None:
        """Release the backend's connections and threads; the store is not used after it."""
        ...

