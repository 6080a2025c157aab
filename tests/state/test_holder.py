"""The lazy store of a process (state/holder.py): opened by the first caller that needs it, one
opening shared by concurrent callers, a failed opening remembered for a moment, closed at shutdown."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tensorwall_proxy.config import Secret, StateConfig
from tensorwall_proxy.state import ErrorCounter, Store, StoreError
from tensorwall_proxy.state.holder import RETRY_OPEN_SECONDS, StateHolder, open_store
from tests.state.conftest import Errors


class CountingOpener:
    """The real ``open_store``, counting its calls; ``gate`` holds each opening until it is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, config: StateConfig, on_error: ErrorCounter | None) -> Store:
        self.calls += 1
        await self.gate.wait()
        return await open_store(config, on_error)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sqlite_holder(path: Path, opener: CountingOpener, clock: Clock | None = None,
                  errors: Errors | None = None, **changes: object) -> StateHolder:
    config = StateConfig(backend="sqlite", path=str(path), **changes)  # type: ignore[arg-type]
    return StateHolder(config, errors, opener=opener, clock=clock or Clock())


async def test_nothing_is_opened_until_a_caller_needs_the_store(tmp_path: Path) -> None:
    opener = CountingOpener()
    holder = sqlite_holder(tmp_path / "state", opener)
    assert holder.opened is None and opener.calls == 0
    assert not (tmp_path / "state").exists()
    store = await holder.store()
    assert holder.opened is store and (tmp_path / "state").is_dir()
    await store.put("resp:x", b"x", 60)
    assert await holder.store() is store and opener.calls == 1
    await holder.close()


async def test_concurrent_first_callers_share_one_opening(tmp_path: Path) -> None:
    opener = CountingOpener()
    opener.gate.clear()
    holder = sqlite_holder(tmp_path, opener)
    callers = [asyncio.create_task(holder.store()) for _ in range(5)]
    await asyncio.sleep(0)
    # The first caller to leave (its client disconnected) does not take the opening with it.
    callers[0].cancel()
    opener.gate.set()
    stores = await asyncio.gather(*callers[1:])
    assert opener.calls == 1
    assert all(s is stores[0] for s in stores)
    assert callers[0].cancelled()
    await holder.close()


async def test_a_failed_opening_is_remembered_for_a_moment_then_tried_again(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the directory should be")
    opener, clock, errors = CountingOpener(), Clock(), Errors()
    holder = sqlite_holder(blocker / "state", opener, clock, errors)
    with pytest.raises(StoreError, match="open"):
        await holder.store()
    assert opener.calls == 1 and errors.seen == [("sqlite", "open")]

    clock.now += RETRY_OPEN_SECONDS / 2
    with pytest.raises(StoreError, match="next attempt"):
        await holder.store()
    assert opener.calls == 1  # not tried again so soon

    blocker.unlink()  # the operator fixed the filesystem
    clock.now += RETRY_OPEN_SECONDS
    store = await holder.store()
    assert opener.calls == 2
    await store.put("resp:x", b"x", 60)
    assert await store.get("resp:x") == b"x"
    await holder.close()


async def test_after_close_the_store_is_closed_and_not_opened_again(tmp_path: Path) -> None:
    holder = sqlite_holder(tmp_path, CountingOpener())
    store = await holder.store()
    await holder.close()
    assert holder.opened is None
    with pytest.raises(StoreError):
        await store.get("resp:x")
    with pytest.raises(StoreError, match="closed"):
        await holder.store()


async def test_close_during_an_opening_closes_what_it_opened(tmp_path: Path) -> None:
    opener = CountingOpener()
    opener.gate.clear()
    holder = sqlite_holder(tmp_path, opener)
    caller = asyncio.create_task(holder.store())
    await asyncio.sleep(0)
    closing = asyncio.create_task(holder.close())
    await asyncio.sleep(0)
    opener.gate.set()
    await closing
    with pytest.raises(StoreError, match="closed"):
        await caller
    assert holder.opened is None


async def test_a_configured_secret_needs_no_store_and_differs_by_name(tmp_path: Path) -> None:
    opener = CountingOpener()
    holder = sqlite_holder(tmp_path, opener, secret=Secret("from /etc/tensorwall/secret"))
    signing = await holder.secret("signing")
    assert len(signing) == 32 and await holder.secret("signing") == signing
    assert await holder.secret("other") != signing
    assert opener.calls == 0 and holder.opened is None
    # Every instance with the same state.secret derives the same bytes.
    same = sqlite_holder(tmp_path / "elsewhere", opener, secret=Secret("from /etc/tensorwall/secret"))
    assert await same.secret("signing") == signing


async def test_without_a_configured_secret_the_stores_generated_one_is_used(tmp_path: Path) -> None:
    holder = sqlite_holder(tmp_path, CountingOpener())
    signing = await holder.secret("signing")
    store = await holder.store()
    assert await store.secret("signing") == signing
    await holder.close()
