"""The SQLite backend beyond the contract: its files, several processes on one host, reopening,
a directory it cannot use, a database another process holds locked, and the sweep of expired rows."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tensorwall_proxy.config import StateConfig
from tensorwall_proxy.observability import Metrics
from tensorwall_proxy.state import StoreError
from tensorwall_proxy.state.holder import open_store
from tensorwall_proxy.state.sqlite import LIMITS_FILE, RESPONSES_FILE, SWEEP_ROWS, SqliteStore
from tests.processes import CLEAN_ENV, ROOT
from tests.state.conftest import Errors, state_errors
from tests.state.test_contract import LONG, SHORT, eventually

# A process that opens the store in ARGV[1] once ARGV[2] exists (so several start their calls
# together) and prints the secret "signing" in hex.
SECRET_SCRIPT = textwrap.dedent("""\
    import asyncio, os, sys, time
    from tensorwall_proxy.config import StateConfig
    from tensorwall_proxy.state.holder import open_store

    async def main():
        deadline = time.monotonic() + 20
        while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
            time.sleep(0.001)
        store = await open_store(StateConfig(path=sys.argv[1], timeout_ms=5000))
        try:
            print((await store.secret("signing")).hex())
        finally:
            await store.close()

    asyncio.run(main())
""")


def sqlite_config(path: Path, **changes: object) -> StateConfig:
    return StateConfig(backend="sqlite", path=str(path), **changes)  # type: ignore[arg-type]


@pytest.mark.slow
def test_processes_asking_at_once_get_the_same_secret(tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", SECRET_SCRIPT, str(tmp_path / "state"), str(go)], cwd=ROOT,
                              env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    assert len(outputs[0]) == 64 and int(outputs[0], 16) >= 0
    assert outputs == [outputs[0]] * 3

    async def read_back() -> bytes:
        store = await open_store(sqlite_config(tmp_path / "state"))
        try:
            return await store.secret("signing")
        finally:
            await store.close()

    assert asyncio.run(read_back()).hex() == outputs[0]  # the same for a process asking later


async def test_the_directory_holds_responses_db_in_wal_mode_and_no_limits_file(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "state"
    assert not directory.exists()
    store = await open_store(sqlite_config(directory))
    try:
        await store.put("resp:x", b"x", LONG)
        assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".db")) == [RESPONSES_FILE]
        assert not (directory / LIMITS_FILE).exists()
        assert directory.stat().st_mode & 0o777 == 0o700  # stored conversations are the callers' data
        with sqlite3.connect(directory / RESPONSES_FILE) as other:
            assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await store.close()


async def test_values_and_secrets_outlive_the_process_that_stored_them(tmp_path: Path) -> None:
    first = await open_store(sqlite_config(tmp_path))
    await first.put("resp:kept", b"kept", LONG)
    await first.put("resp:short", b"short", SHORT)
    secret = await first.secret("signing")
    await first.close()

    again = await open_store(sqlite_config(tmp_path))
    try:
        assert await again.get("resp:kept") == b"kept"
        assert await again.secret("signing") == secret

        async def short_gone() -> bool:
            return await again.get("resp:short") is None

        assert await eventually(short_gone)
    finally:
        await again.close()


@pytest.mark.parametrize("kind", ["under a file", "a file"])
async def test_a_path_that_cannot_be_a_directory_fails_to_open_and_is_counted(tmp_path: Path, kind: str) -> None:
    # The tests run as root, for whom permissions do not stop a write: a regular file in the way
    # stands for a read-only filesystem (both are an OSError from mkdir or open).
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    errors = Errors()
    with pytest.raises(StoreError, match=r"state store \(sqlite\) open: "):
        await open_store(sqlite_config(blocker / "state" if kind == "under a file" else blocker), errors)
    assert errors.seen == [("sqlite", "open")]


async def test_a_write_locked_by_another_process_fails_within_the_timeout_and_reads_go_on(tmp_path: Path) -> None:
    metrics = Metrics()
    store = await open_store(sqlite_config(tmp_path, timeout_ms=100), metrics.state_error)
    try:
        await store.put("resp:x", b"before", LONG)
        # Another process's writer holds the write lock (sqlite3 in this process stands for it: a
        # connection of its own takes the same file lock).
        other = sqlite3.connect(tmp_path / RESPONSES_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE entries SET value = x'00' WHERE key = 'nothing'")
        try:
            with pytest.raises(StoreError, match=r"state store \(sqlite\) put: "):
                await asyncio.wait_for(store.put("resp:x", b"during", LONG), 5)  # bounded: a hang fails here
            assert state_errors(metrics, "sqlite", "put") == 1
            assert await store.get("resp:x") == b"before"  # WAL: a reader never waits for the writer
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.put("resp:x", b"after", LONG)
        assert await store.get("resp:x") == b"after"
        assert state_errors(metrics, "sqlite", "put") == 1
    finally:
        await store.close()


async def test_calls_that_timed_out_in_the_queue_do_not_hold_up_the_next(tmp_path: Path) -> None:
    store = await open_store(sqlite_config(tmp_path, timeout_ms=100))
    assert isinstance(store, SqliteStore)
    try:
        other = sqlite3.connect(tmp_path / RESPONSES_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE entries SET value = x'00' WHERE key = 'nothing'")
        try:
            # Many writers time out while the lock is held: the thread gives each up within its bound.
            results = await asyncio.gather(*(store.put(f"resp:{i}", b"x", LONG) for i in range(20)),
                                           return_exceptions=True)
            assert all(isinstance(r, StoreError) for r in results)
        finally:
            other.execute("ROLLBACK")
            other.close()

        async def writable() -> bool:
            try:
                await store.put("resp:after", b"y", LONG)
            except StoreError:
                return False
            return True

        assert await eventually(writable)
        assert await store.get("resp:after") == b"y"
    finally:
        await store.close()


async def test_the_sweep_removes_expired_rows_in_bounded_batches_and_keeps_live_ones(tmp_path: Path) -> None:
    # A thousand writes queued at once: a generous bound, for a loaded machine.
    store = await open_store(sqlite_config(tmp_path, timeout_ms=20_000))
    assert isinstance(store, SqliteStore)
    try:
        expired = SWEEP_ROWS * 2 + 7  # three statements' worth
        await asyncio.gather(*(store.put(f"resp:old{i}", b"x", SHORT) for i in range(expired)))
        await store.put("resp:live", b"live", LONG)

        async def all_expired() -> bool:
            return await store.get(f"resp:old{expired - 1}") is None

        assert await eventually(all_expired)
        assert await store.sweep() == expired
        with sqlite3.connect(tmp_path / RESPONSES_FILE) as other:
            assert other.execute("SELECT key FROM entries").fetchall() == [("resp:live",)]
        assert await store.sweep() == 0
        assert await store.get("resp:live") == b"live"
    finally:
        await store.close()
