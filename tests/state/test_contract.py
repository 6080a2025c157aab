"""The ``Store`` contract (tensorwall_proxy/state/__init__.py), the same cases run against each backend.

Expiry is shown by waiting for it with a bounded poll, and a renewed time to live by comparing with a
key that was not renewed: no assertion depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from tensorwall_proxy.state import Store, StoreError
from tests.state.conftest import OpenStore

# A time to live that has surely passed once the poll below sees it gone, short enough to wait for.
SHORT = 0.2
LONG = 3600.0


async def eventually(condition: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while True:
        if await condition():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


async def test_put_then_get_returns_the_bytes_and_a_second_put_replaces_them(store: Store) -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, every byte value, NULs included
    await store.put("resp:one", value, LONG)
    assert await store.get("resp:one") == value
    await store.put("resp:one", b"second", LONG)
    assert await store.get("resp:one") == b"second"


async def test_get_of_a_key_never_stored_is_none(store: Store) -> None:
    assert await store.get("resp:never") is None


async def test_delete_says_whether_the_key_existed(store: Store) -> None:
    await store.put("resp:gone", b"x", LONG)
    assert await store.delete("resp:gone") is True
    assert await store.get("resp:gone") is None
    assert await store.delete("resp:gone") is False
    assert await store.delete("resp:never") is False


async def test_keys_are_separate(store: Store) -> None:
    await store.put("resp:a", b"a", LONG)
    await store.put("aff:a", b"b", LONG)
    assert (await store.get("resp:a"), await store.get("aff:a")) == (b"a", b"b")
    await store.delete("resp:a")
    assert await store.get("aff:a") == b"b"


async def test_a_value_is_gone_once_its_time_to_live_has_passed(store: Store) -> None:
    await store.put("resp:short", b"x", SHORT)
    await store.put("resp:long", b"y", LONG)

    async def gone() -> bool:
        return await store.get("resp:short") is None

    assert await eventually(gone)
    assert await store.delete("resp:short") is False  # an expired key did not exist any more
    await store.touch(["resp:short"], LONG)  # renewing it does not bring it back
    assert await store.get("resp:short") is None
    assert await store.get("resp:long") == b"y"


async def test_touch_renews_the_keys_that_exist_and_creates_none(store: Store) -> None:
    for key in ("resp:kept", "resp:also-kept", "resp:control"):
        await store.put(key, key.encode(), SHORT)
    await store.touch(["resp:kept", "resp:missing", "resp:also-kept"], LONG)

    async def control_gone() -> bool:
        return await store.get("resp:control") is None

    # Once the key put at the same time without renewal has expired, the renewed ones must be there.
    assert await eventually(control_gone)
    assert await store.get("resp:kept") == b"resp:kept"
    assert await store.get("resp:also-kept") == b"resp:also-kept"
    assert await store.get("resp:missing") is None


async def test_touch_of_no_keys_and_of_many(store: Store) -> None:
    await store.touch([], LONG)
    keys = [f"resp:{i}" for i in range(600)]
    for key in keys[::50]:
        await store.put(key, b"v", LONG)
    await store.touch(keys, LONG)  # more keys than one pipeline or statement chunk holds on Redis
    assert [await store.get(key) for key in keys[::50]] == [b"v"] * 12


async def test_a_time_to_live_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.put("resp:x", b"x", 0)
    with pytest.raises(ValueError):
        await store.touch(["resp:x"], -1)


async def test_secret_is_32_bytes_made_once_per_name(store: Store) -> None:
    first = await store.secret("signing")
    assert len(first) == 32
    assert await store.secret("signing") == first
    other = await store.secret("other")
    assert len(other) == 32 and other != first


async def test_a_second_store_on_the_same_place_shares_values_and_secrets(open_state: OpenStore) -> None:
    # Two workers of one host (SQLite) or two instances of a fleet (Redis).
    one, two = await open_state(), await open_state()
    secrets = await asyncio.gather(one.secret("signing"), two.secret("signing"))
    assert secrets[0] == secrets[1]
    await one.put("resp:shared", b"from one", LONG)
    assert await two.get("resp:shared") == b"from one"
    assert await two.delete("resp:shared") is True
    assert await one.get("resp:shared") is None


async def test_concurrent_calls_all_complete(store: Store) -> None:
    await asyncio.gather(*(store.put(f"resp:c{i}", str(i).encode(), LONG) for i in range(200)))
    values = await asyncio.gather(*(store.get(f"resp:c{i}") for i in range(200)))
    assert values == [str(i).encode() for i in range(200)]


async def test_a_closed_store_raises_store_error_and_counts_it(open_state: OpenStore) -> None:
    errors: list[tuple[str, str]] = []
    store = await open_state(on_error=lambda backend, operation: errors.append((backend, operation)))
    await store.put("resp:x", b"x", LONG)
    await store.close()
    with pytest.raises(StoreError):
        await store.get("resp:x")
    assert errors == [(store.backend, "get")]
