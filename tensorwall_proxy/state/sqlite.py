"""The SQLite backend of the state store: one host, shared by every ``--workers`` process (DESIGN §14).

Files, in the directory ``state.path``: ``responses.db`` holds values with their expiry and the
shared secrets (``SqliteStore``); ``limits.db`` beside it holds the principals' limit counters
(``SqliteLimits``), one row per principal, each check-and-update one transaction.
Each file is served by one thread of its own per process (``Database``): a call is queued to that
thread and its answer comes back through the event loop, which never waits on SQLite. WAL mode lets
readers go on while another process writes; the busy timeout makes a writer wait for another
process's write instead of failing at once, never longer than the call's own bound.

Expired rows are invisible at once (every read compares with the host's clock) and removed by a
bounded sweep now and then, a few hundred rows per statement; no request waits on an unbounded DELETE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import orjson

from ..limits import Ask, Counters, Verdict, decide, renew, settle
from . import ErrorCounter, StoreError
from .guard import CallGuard

if TYPE_CHECKING:
    from ..config import Limits, StateConfig

T = TypeVar("T")
log = logging.getLogger(__name__)

RESPONSES_FILE: Final = "responses.db"
# The principals' limits keep their counters here (a file of their own, so a burst of stored
# responses never waits behind a limit check, nor the reverse).
LIMITS_FILE: Final = "limits.db"
# Calls waiting for a file's thread; past it a call fails at once rather than queue behind a thread
# that is that far behind (each call is bounded, so the queue drains within a few timeouts).
MAX_QUEUED: Final = 1024
# Opening creates the directory, the file and its tables, and switching to WAL may wait for another
# worker doing the same at the same moment: a bound of its own, longer than one call's.
OPEN_SECONDS: Final = 5.0
# The sweep of expired rows: about once a minute per process (jittered, so workers do not line up),
# SWEEP_ROWS per statement, at most SWEEP_BATCHES statements a round.
SWEEP_SECONDS: Final = 60.0
SWEEP_ROWS: Final = 500
SWEEP_BATCHES: Final = 20
SECRET_BYTES: Final = 32

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class _Job(Generic[T]):
    """One call queued for a file's thread, and the future its caller awaits on the loop."""

    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[sqlite3.Connection], T], future: asyncio.Future[T],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


def _settle(future: asyncio.Future[Any], ok: bool, outcome: Any) -> None:
    if future.done():  # its caller gave up (the timeout) while the thread worked
        return
    if ok:
        future.set_result(outcome)
    else:
        future.set_exception(outcome)


class Database:
    """One SQLite file and the one thread that serves it, for as long as the process needs it.

    Only that thread touches the connection, which it opens on its first call (so a file that cannot
    be opened fails that call, and the next one tries again). A caller that gives up (its timeout)
    leaves: a call still queued is then skipped, and one already running is interrupted.
    """

    def __init__(self, path: Path, busy_seconds: float, schema: str) -> None:
        self.path = path
        self._busy_ms = max(1, round(busy_seconds * 1000))
        self._schema = schema
        self._queue: queue.Queue[_Job[Any] | None] = queue.Queue()
        self._lock = threading.Lock()  # guards _running against interrupt()
        self._running: _Job[Any] | None = None
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"tensorwall-{path.stem}", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the file's thread; its result or its exception."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path.name} is closed")
        if self._queue.qsize() >= MAX_QUEUED:
            raise sqlite3.OperationalError(f"{MAX_QUEUED} calls already wait for {self.path.name}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        job = _Job(fn, future, loop)
        self._queue.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            # Its caller gave up: if the thread is running this very call, stop the statement, so
            # the calls queued behind it are not held up too.
            with self._lock:
                if self._running is job and self._connection is not None:
                    self._connection.interrupt()
            raise

    async def close(self) -> None:
        """Let the calls already queued finish, then close the connection and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        # Each queued call is bounded by the busy timeout; the join waits in a thread, not on the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.future.cancelled():
                continue  # its caller left while it waited
            with self._lock:
                self._running = job
            ok = False
            outcome: Any
            try:
                outcome = job.fn(self._connection or self._connect())
                ok = True
            except Exception as exc:
                outcome = exc
            finally:
                with self._lock:
                    self._running = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                job.loop.call_soon_threadsafe(_settle, job.future, ok, outcome)
            del job, outcome
        if self._connection is not None:
            self._connection.close()

    def _connect(self) -> sqlite3.Connection:
        # The directory is the gateway's alone (stored conversations are callers' data): 0700 when
        # it makes it; systemd's StateDirectory= is 0700 by the unit's StateDirectoryMode=.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Autocommit: every statement here is its own transaction, and none holds a lock between calls.
        connection = sqlite3.connect(self.path, timeout=OPEN_SECONDS, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is safe against a crash of the process; a power cut may lose the
            # last writes, which for stored responses and counters is acceptable.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(self._schema)
            connection.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return connection


# --- the statements, run on the file's thread ---------------------------------------------------


def _nothing(connection: sqlite3.Connection) -> None:
    """The opening call: connecting (and making the tables) is all it does."""


def _get(connection: sqlite3.Connection, key: str, now: float) -> bytes | None:
    row = connection.execute("SELECT value FROM entries WHERE key = ? AND expires > ?", (key, now)).fetchone()
    return None if row is None else bytes(row[0])


def _put(connection: sqlite3.Connection, key: str, value: bytes, expires: float) -> None:
    connection.execute("INSERT OR REPLACE INTO entries (key, value, expires) VALUES (?, ?, ?)", (key, value, expires))


def _delete(connection: sqlite3.Connection, key: str, now: float) -> bool:
    # fetchall: the statement must run to its end for the row to be gone.
    rows = connection.execute("DELETE FROM entries WHERE key = ? RETURNING expires", (key,)).fetchall()
    return bool(rows) and rows[0][0] > now


def _touch(connection: sqlite3.Connection, keys: bytes, expires: float, now: float) -> None:
    # One statement for all the keys (a JSON array), so they are renewed together.
    connection.execute("UPDATE entries SET expires = ? WHERE expires > ? AND key IN (SELECT value FROM json_each(?))",
                       (expires, now, keys))


def _secret(connection: sqlite3.Connection, name: str, candidate: bytes) -> bytes:
    # Whoever inserts first wins; everyone, that process included, then reads the winner.
    connection.execute("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)", (name, candidate))
    row = connection.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
    if row is None:  # pragma: no cover - the row was just inserted or already there
        raise sqlite3.OperationalError(f"secret {name!r} vanished")
    return bytes(row[0])


def _sweep(connection: sqlite3.Connection, now: float, limit: int) -> int:
    cursor = connection.execute(
        "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries WHERE expires <= ? LIMIT ?)", (now, limit))
    return cursor.rowcount


def _expiry(now: float, ttl_seconds: float) -> float:
    if not ttl_seconds > 0:
        raise ValueError(f"a time to live must be positive, got {ttl_seconds!r}")
    return now + ttl_seconds


async def _open_file(backend: str, config: StateConfig, name: str, schema: str,
                     on_error: ErrorCounter | None) -> tuple[Database, CallGuard]:
    """One of the directory's files, opened (and made, with its tables) by its thread, with the
    guard its calls go through; StoreError when it cannot be."""
    guard = CallGuard(backend, config.timeout_seconds, (sqlite3.Error, OSError), on_error)
    database = Database(Path(config.path) / name, config.timeout_seconds, schema)
    try:
        await guard.run("open", database.run(_nothing), seconds=max(OPEN_SECONDS, config.timeout_seconds))
    except BaseException:
        await database.close()
        raise
    return database, guard


class SqliteStore:
    """The state store in ``<state.path>/responses.db`` (see the module's docstring)."""

    backend = "sqlite"

    def __init__(self, database: Database, guard: CallGuard, clock: Callable[[], float] = time.time) -> None:
        self._database = database
        self._guard = guard
        self._clock = clock  # the host's clock: expiry times are shared with the other processes
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> SqliteStore:
        """Open (creating them when needed) the directory and ``responses.db``; StoreError when it
        cannot (a read-only filesystem, a path that is not a directory)."""
        database, guard = await _open_file(cls.backend, config, RESPONSES_FILE, _SCHEMA, on_error)
        store = cls(database, guard)
        store._sweeper = asyncio.create_task(store._sweep_now_and_then(), name="tensorwall-state-sweep")
        return store

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when there is none or it expired."""
        now = self._clock()
        return await self._guard.run("get", self._database.run(lambda c: _get(c, key, now)))

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """Store ``value`` under ``key`` (replacing any), expiring ``ttl_seconds`` from now."""
        expires = _expiry(self._clock(), ttl_seconds)
        await self._guard.run("put", self._database.run(lambda c: _put(c, key, value, expires)))

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed (and had not expired)."""
        now = self._clock()
        return await self._guard.run("delete", self._database.run(lambda c: _delete(c, key, now)))

    async def touch(self, keys: Sequence[str], ttl_seconds: float) -> None:
        """Renew the time to live of the ``keys`` that exist, in one statement."""
        now = self._clock()
        expires = _expiry(now, ttl_seconds)
        if not keys:
            return
        listed = orjson.dumps(list(keys))
        await self._guard.run("touch", self._database.run(lambda c: _touch(c, listed, expires, now)))

    async def secret(self, name: str) -> bytes:
        """The 32-byte secret under ``name``, the same for every process on this host."""
        candidate = secrets.token_bytes(SECRET_BYTES)
        return await self._guard.run("secret", self._database.run(lambda c: _secret(c, name, candidate)))

    async def sweep(self) -> int:
        """Remove expired rows, SWEEP_ROWS per statement, at most SWEEP_BATCHES statements; how many."""
        removed = 0
        for _ in range(SWEEP_BATCHES):
            batch = partial(_sweep, now=self._clock(), limit=SWEEP_ROWS)
            count = await self._guard.run("sweep", self._database.run(batch))
            removed += count
            if count < SWEEP_ROWS:
                break
        return removed

    async def close(self) -> None:
        """Stop the sweep, let the calls queued finish, close the file and end its thread."""
        self._guard.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self._database.close()

    async def _sweep_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS * random.uniform(0.5, 1.5))
            try:
                removed = await self.sweep()
            except StoreError as exc:  # counted by the guard; the next round tries again
                log.debug("%s", exc)
                continue
            if removed:
                log.debug("state store: %d expired entries removed", removed)


# --- the principals' limit counters -------------------------------------------------------------

_LIMITS_SCHEMA: Final = "CREATE TABLE IF NOT EXISTS counters (principal TEXT PRIMARY KEY, state BLOB NOT NULL);"


def _counted(connection: sqlite3.Connection, principal: str, change: Callable[[Counters, float], T]) -> T:
    """``change`` applied to a principal's counters in one write transaction, at the host's clock as
    read inside it: BEGIN IMMEDIATE takes the file's write lock first, so the workers' checks of one
    principal follow one another and every one sees the last one's result (exact across --workers)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        counters, now = _read_counters(connection, principal)
        before = counters.dumps()
        outcome = change(counters, now)
        after = counters.dumps()
        if after != before:
            connection.execute("INSERT INTO counters (principal, state) VALUES (?, ?) "
                               "ON CONFLICT (principal) DO UPDATE SET state = excluded.state", (principal, after))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return outcome


def _read_counters(connection: sqlite3.Connection, principal: str) -> tuple[Counters, float]:
    row = connection.execute("SELECT state FROM counters WHERE principal = ?", (principal,)).fetchone()
    return Counters.loads(None if row is None else bytes(row[0])), time.time()


class SqliteLimits:
    """The limit counters in ``<state.path>/limits.db`` (see the module's docstring)."""

    backend = "sqlite"

    def __init__(self, database: Database, guard: CallGuard) -> None:
        self._database = database
        self._guard = guard

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> SqliteLimits:
        """Open (creating them when needed) the directory and ``limits.db``; StoreError when it cannot."""
        return cls(*await _open_file(cls.backend, config, LIMITS_FILE, _LIMITS_SCHEMA, on_error))

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``limits.decide`` on the principal's row, in one transaction."""
        return await self._guard.run("limit_check", self._database.run(
            lambda c: _counted(c, principal, lambda counters, now: decide(counters, limits, ask, now))))

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``limits.settle`` on the principal's row, in one transaction."""
        await self._guard.run("limit_settle", self._database.run(lambda c: _counted(
            c, principal, lambda counters, now: settle(counters, limits, reserved, used, day, lease, now))))

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``limits.renew`` on the principal's row, in one transaction."""
        await self._guard.run("limit_renew", self._database.run(
            lambda c: _counted(c, principal, lambda counters, now: renew(counters, leases, now))))

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """The principal's row as it is, and the host's time."""
        return await self._guard.run("limit_read", self._database.run(lambda c: _read_counters(c, principal)))

    async def close(self) -> None:
        """Let the calls queued finish, close the file and end its thread."""
        self._guard.closed = True
        await self._database.close()
