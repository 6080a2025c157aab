"""The SQLite backend of the state store: one host, shared by every ``--workers`` process (DESIGN §14).

Files, in the directory ``state.path``: ``responses.db`` holds values with their expiry and the
shared secrets (``SqliteStore``); ``limits.db`` beside it holds the principals' limit counters
(``SqliteLimits``), one row per principal, each check-and-update one transaction.
Each file is served by one thread of its own per process (``Database``): a call is queued to that
thread and its answer comes back through the event loop, which never waits on SQLite. What queued
while the thread was busy is served in one turn: the limit changes among it in one transaction, and
all the answers handed to the loop at once (under load a check costs a share of a commit and of a
wake-up, not one of each). WAL mode lets readers go on while another process writes; the busy
timeout makes a writer wait for another process's write instead of failing at once, never longer
than the call's own bound.

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
# Calls one turn of the thread takes: one transaction holds the file's write lock for no more
# changes than this.
BATCH: Final = 64
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
    """One call queued for a file's thread, and the future its caller awaits on the loop.
    ``together``: a change that shares one write transaction with the others queued beside it, and
    the turn's ``shared`` values (``fn(connection, shared)``). ``keep``: run even when its caller has
    left (a settlement that must land however its request ended)."""

    __slots__ = ("fn", "future", "keep", "loop", "together")

    def __init__(self, fn: Callable[..., T], future: asyncio.Future[T],
                 loop: asyncio.AbstractEventLoop, together: bool, keep: bool) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop
        self.together = together
        self.keep = keep


Outcome = tuple["asyncio.Future[Any]", bool, Any]


def _deliver(outcomes: list[Outcome]) -> None:
    """On the loop: each caller gets its result or its exception (unless it gave up meanwhile)."""
    for future, ok, outcome in outcomes:
        if future.done():  # its caller gave up (the timeout) while the thread worked
            continue
        if ok:
            future.set_result(outcome)
        else:
            future.set_exception(outcome)


class Database:
    """One SQLite file and the one thread that serves it, for as long as the process needs it.

    Only that thread touches the connection, which it opens on its first call (so a file that cannot
    be opened fails that call, and the next one tries again). Each turn it takes every call queued
    (up to BATCH): the ``together`` ones run in one write transaction, sharing what they read (a
    dict the turn's ``flush`` writes back before the commit), the others one by one; the answers go
    back to the loop in one hand-over. The loop hands its calls over once an iteration too, so the
    thread is woken once for all the calls of one iteration, not once a call. A caller that gives up
    (its timeout) leaves: a call still queued is then skipped (unless it is kept), and a turn whose
    every caller has left is interrupted.
    """

    def __init__(self, path: Path, busy_seconds: float, schema: str,
                 flush: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None) -> None:
        self.path = path
        self._flush = flush
        self._busy_ms = max(1, round(busy_seconds * 1000))
        self._schema = schema
        self._queue: queue.SimpleQueue[list[_Job[Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _running against interrupt(), and _waiting
        self._waiting = 0  # calls submitted and not yet taken by the thread
        self._pending: list[_Job[Any]] = []  # calls of this loop iteration, handed over at its end
        self._running: list[_Job[Any]] = []
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"tensorwall-{path.stem}", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """``fn(connection)`` queued for the file's thread, alone: the future of its result or its
        exception (which ``CallGuard.run`` bounds)."""
        return self._submit(fn, False)

    def together(self, fn: Callable[[sqlite3.Connection, dict[str, Any]], T], *,
                 keep: bool = False) -> asyncio.Future[T]:
        """``fn(connection, shared)`` queued for the file's thread, to run inside the write transaction
        of its turn with the other ``together`` calls of the turn: ``shared`` holds what they read and
        changed, for ``flush`` to write before the commit. The future of its result or its exception.
        ``keep``: it runs even if its caller gives up meanwhile."""
        return self._submit(fn, True, keep)

    def _submit(self, fn: Callable[..., T], together: bool, keep: bool = False) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if self._closed:
            future.set_exception(sqlite3.ProgrammingError(f"{self.path.name} is closed"))
        elif self._waiting >= MAX_QUEUED:
            future.set_exception(sqlite3.OperationalError(f"{MAX_QUEUED} calls already wait for {self.path.name}"))
        else:
            job = _Job(fn, future, loop, together, keep)
            with self._lock:
                self._waiting += 1
            if not self._pending:
                loop.call_soon(self._hand_over)
            self._pending.append(job)
            if not keep:  # a kept call runs to its end whatever its caller does: nothing to stop
                future.add_done_callback(partial(self._left, job))
        return future

    def _hand_over(self) -> None:
        """The calls of this loop iteration, to the thread at once."""
        jobs, self._pending = self._pending, []
        if jobs:
            self._queue.put(jobs)

    def _left(self, job: _Job[Any], future: asyncio.Future[Any]) -> None:
        """A call's future is done; if its caller gave up (cancelled, or past its bound) while the
        thread runs its turn and nobody else waits on that turn any more, stop the statement, so the
        calls queued behind it are not held up."""
        if not future.cancelled() and not isinstance(future.exception(), TimeoutError):
            return
        with self._lock:
            running = self._running
            if job in running and self._connection is not None and all(j.future.done() for j in running):
                self._connection.interrupt()

    async def close(self) -> None:
        """Let the calls already queued finish, then close the connection and end the thread."""
        if self._closed:
            return
        self._closed = True
        self._hand_over()
        self._queue.put(None)
        # Each queued call is bounded by the busy timeout; the join waits in a thread, not on the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    def _serve(self) -> None:
        more = True
        while more:
            taken = self._queue.get()
            if taken is None:
                break
            jobs = list(taken)
            while len(jobs) < BATCH:
                try:
                    taken = self._queue.get_nowait()
                except queue.Empty:
                    break
                if taken is None:
                    more = False
                    break
                jobs += taken
            with self._lock:
                self._waiting -= len(jobs)
                jobs = [j for j in jobs if j.keep or not j.future.done()]  # their callers left while they waited
                self._running = jobs
            try:
                outcomes = self._turn(jobs)
            finally:
                with self._lock:
                    self._running = []
            by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
            for j, outcome in zip(jobs, outcomes, strict=True):
                by_loop.setdefault(j.loop, []).append(outcome)
            for loop, delivered in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(_deliver, delivered)
            del jobs, outcomes, by_loop
        if self._connection is not None:
            self._connection.close()

    def _turn(self, jobs: list[_Job[Any]]) -> list[Outcome]:
        """Run one turn's calls; each one's outcome, in order."""
        outcomes: dict[int, Outcome] = {}
        together = [j for j in jobs if j.together]
        if together:
            for j, outcome in zip(together, self._transaction(together), strict=True):
                outcomes[id(j)] = outcome
        for j in jobs:
            if not j.together:
                outcomes[id(j)] = self._one(j)
        return [outcomes[id(j)] for j in jobs]

    def _one(self, job: _Job[Any]) -> Outcome:
        try:
            return job.future, True, job.fn(self._connection or self._connect())
        except Exception as exc:
            return job.future, False, exc

    def _transaction(self, jobs: list[_Job[Any]]) -> list[Outcome]:
        """``jobs`` in one write transaction: BEGIN IMMEDIATE takes the file's write lock first, so
        every process's changes follow one another. A call that fails alone (a bug in it) fails
        alone; a failure of the file (locked, full, gone) fails them all, none committed."""
        try:
            connection = self._connection or self._connect()
            connection.execute("BEGIN IMMEDIATE")
        except Exception as exc:
            return [(j.future, False, exc) for j in jobs]
        outcomes: list[Outcome] = []
        shared: dict[str, Any] = {}
        try:
            for j in jobs:
                try:
                    outcomes.append((j.future, True, j.fn(connection, shared)))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    outcomes.append((j.future, False, exc))
            if self._flush is not None and shared:
                self._flush(connection, shared)
            connection.execute("COMMIT")
        except Exception as exc:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            return [(j.future, False, exc) for j in jobs]
        return outcomes

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


async def _open_file(backend: str, config: StateConfig, name: str, schema: str, on_error: ErrorCounter | None,
                     flush: Callable[[sqlite3.Connection, dict[str, Any]], None] | None = None,
                     ) -> tuple[Database, CallGuard]:
    """One of the directory's files, opened (and made, with its tables) by its thread, with the
    guard its calls go through; StoreError when it cannot be."""
    guard = CallGuard(backend, config.timeout_seconds, (sqlite3.Error, OSError), on_error)
    database = Database(Path(config.path) / name, config.timeout_seconds, schema, flush)
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


def _counted(connection: sqlite3.Connection, shared: dict[str, Any], principal: str,
             change: Callable[[Counters, float], T]) -> T:
    """``change`` applied to a principal's counters at the host's clock as read inside the write
    transaction of its turn (``Database.together``): the workers' checks of one principal follow one
    another and every one sees the last one's result (exact across --workers). The row is read once
    a turn and kept in ``shared``; ``_write_counters`` writes what the turn changed."""
    counters = shared.get(principal)
    if counters is None:
        counters = shared[principal] = _read_counters(connection, principal)[0]
    return change(counters, time.time())


def _write_counters(connection: sqlite3.Connection, shared: dict[str, Any]) -> None:
    """The rows a turn read, as its changes left them: one statement."""
    connection.executemany("INSERT INTO counters (principal, state) VALUES (?, ?) "
                           "ON CONFLICT (principal) DO UPDATE SET state = excluded.state",
                           [(principal, counters.dumps()) for principal, counters in shared.items()])


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
        return cls(*await _open_file(cls.backend, config, LIMITS_FILE, _LIMITS_SCHEMA, on_error, _write_counters))

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``limits.decide`` on the principal's row, in one transaction."""
        return await self._guard.run("limit_check", self._database.together(
            lambda c, shared: _counted(c, shared, principal, lambda counters, now: decide(counters, limits, ask, now))))

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``limits.settle`` on the principal's row, in one transaction."""
        await self._guard.run("limit_settle", self._database.together(lambda c, shared: _counted(
            c, shared, principal, lambda counters, now: settle(counters, limits, reserved, used, day, lease, now)),
            keep=True))

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``limits.renew`` on the principal's row, in one transaction."""
        await self._guard.run("limit_renew", self._database.together(
            lambda c, shared: _counted(c, shared, principal, lambda counters, now: renew(counters, leases, now))))

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """The principal's row as it is, and the host's time."""
        return await self._guard.run("limit_read", self._database.run(lambda c: _read_counters(c, principal)))

    async def close(self) -> None:
        """Let the calls queued finish, close the file and end its thread."""
        self._guard.closed = True
        await self._database.close()
