"""The Redis backend beyond the contract: its key prefix, and outages made with a relay of the
test's own (the shared Redis is never stopped or flushed): calls fail within the timeout, are
counted, are not retried, and the store recovers when Redis is back."""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.exceptions import RedisError
from yarl import URL

from tensorwall_proxy.config import Limits, Secret, StateConfig
from tensorwall_proxy.limits import Ask
from tensorwall_proxy.observability import Metrics
from tensorwall_proxy.state import Store, StoreError
from tensorwall_proxy.state.guard import CallGuard
from tensorwall_proxy.state.holder import open_store
from tensorwall_proxy.state.redis import RedisLimits, RedisStore, ScriptBatches, packed
from tests.conftest import redis_keys
from tests.processes import CLEAN_ENV, ROOT
from tests.state.conftest import Errors, state_errors
from tests.state.relay import TcpRelay
from tests.state.test_contract import LONG, eventually

TIMEOUT_MS = 200
# A call that does not come back within this is a hang the store's own timeout failed to catch.
HANG = 5.0


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[TcpRelay]:
    url = URL(redis_url)
    relay = TcpRelay(url.host or "127.0.0.1", url.port or 6379)
    await relay.start()
    yield relay
    await relay.close()


def through(relay: TcpRelay, redis_url: str, key_prefix: str) -> StateConfig:
    """The store's configuration with Redis reached through ``relay``."""
    url = URL(redis_url).with_host("127.0.0.1").with_port(relay.port)
    return StateConfig(backend="redis", url=Secret(str(url)), key_prefix=key_prefix, timeout_ms=TIMEOUT_MS)


async def test_every_key_is_under_the_prefix(redis_url: str, key_prefix: str) -> None:
    config = StateConfig(backend="redis", url=Secret(redis_url), key_prefix=key_prefix)
    store = await open_store(config)
    try:
        await store.put("resp:one", b"1", LONG)
        await store.secret("signing")
        assert redis_keys(key_prefix) == [f"{key_prefix}resp:one".encode(), f"{key_prefix}secret:signing".encode()]
    finally:
        await store.close()


async def test_a_redis_that_does_not_answer_fails_to_open_and_is_counted(key_prefix: str) -> None:
    # A port with nobody on it: a relay that was started and closed again.
    relay = TcpRelay("127.0.0.1", 9)
    await relay.start()
    await relay.close()
    errors = Errors()
    config = StateConfig(backend="redis", url=Secret(f"redis://127.0.0.1:{relay.port}/0"), key_prefix=key_prefix)
    with pytest.raises(StoreError, match=r"state store \(redis\) open: "):
        await asyncio.wait_for(open_store(config, errors), HANG)
    assert errors.seen == [("redis", "open")]


async def calls(store: Store) -> dict[str, asyncio.Future[object]]:
    """One call of each operation, each bounded by HANG, run together; their outcomes by operation."""
    operations = {
        "get": store.get("resp:kept"),
        "put": store.put("resp:new", b"new", LONG),
        "delete": store.delete("resp:kept"),
        "touch": store.touch(["resp:kept"], LONG),
        "secret": store.secret("signing"),
    }
    futures = {name: asyncio.ensure_future(asyncio.wait_for(call, HANG)) for name, call in operations.items()}
    await asyncio.wait(futures.values())
    return futures  # type: ignore[return-value]


async def test_an_outage_fails_calls_within_the_timeout_counts_them_and_the_store_recovers(
        relay: TcpRelay, redis_url: str, key_prefix: str) -> None:
    metrics = Metrics()
    store = await open_store(through(relay, redis_url, key_prefix), metrics.state_error)
    try:
        await store.put("resp:kept", b"kept", LONG)
        await relay.close()  # Redis is gone: open connections cut, new ones refused

        outcomes = await calls(store)
        for name, future in outcomes.items():
            assert isinstance(future.exception(), StoreError), (name, future)
            assert state_errors(metrics, "redis", name) == 1, name

        await relay.start()  # Redis is back, on the same address

        async def recovered() -> bool:
            try:
                return await store.get("resp:kept") == b"kept"
            except StoreError:
                return False

        assert await eventually(recovered)
        assert await store.delete("resp:kept") is True  # what was stored before the outage survived it
    finally:
        await store.close()


# Each operation with the command word it sends: GET alone, and two pipelines.
STALLED: dict[str, tuple[Callable[[Store], Awaitable[object]], bytes]] = {
    "get": (lambda store: store.get("resp:kept"), b"GET"),
    "touch": (lambda store: store.touch(["resp:kept"], LONG), b"PEXPIRE"),
    "secret": (lambda store: store.secret("signing"), b"SET"),
}


@pytest.mark.parametrize("operation", list(STALLED))
async def test_a_call_redis_never_answers_is_abandoned_at_the_timeout_not_retried_and_its_connection_closed(
        relay: TcpRelay, redis_url: str, key_prefix: str, operation: str) -> None:
    call, word = STALLED[operation]
    metrics = Metrics()
    store = await open_store(through(relay, redis_url, key_prefix), metrics.state_error)
    try:
        await store.put("resp:kept", b"kept", LONG)
        assert relay.accepted == 1  # the pool's one connection so far
        relay.stalled = True  # Redis hangs: commands go nowhere and nothing comes back

        with pytest.raises(StoreError, match=rf"state store \(redis\) {operation}: no answer within {TIMEOUT_MS} ms"):
            await asyncio.wait_for(call(store), HANG)
        assert state_errors(metrics, "redis", operation) == 1

        async def connection_closed() -> bool:
            return relay.closed_by_client == 1

        assert await eventually(connection_closed)  # its answer can never be read as the next one's
        assert bytes(relay.held).count(word) == 1  # sent once: not retried
        assert relay.accepted == 1  # and no new connection to retry on

        relay.stalled = False
        assert await store.get("resp:kept") == b"kept"  # the next call takes a new connection
        assert relay.accepted == 2
    finally:
        await store.close()


async def test_a_limit_check_redis_never_answers_fails_at_the_timeout_its_batch_connection_closed(
        relay: TcpRelay, redis_url: str, key_prefix: str) -> None:
    metrics = Metrics()
    limits_store = await RedisLimits.open(through(relay, redis_url, key_prefix), metrics.state_error)
    try:
        limits = Limits(requests_per_minute=100)
        assert (await limits_store.check("team-a", limits, Ask())).admitted
        assert relay.accepted == 1  # the pool's one connection, which the batches use too
        relay.stalled = True

        with pytest.raises(StoreError, match=rf"limit_check: no answer within {TIMEOUT_MS} ms"):
            await asyncio.wait_for(limits_store.check("team-a", limits, Ask()), HANG)
        assert state_errors(metrics, "redis", "limit_check") == 1

        async def connection_closed() -> bool:
            return relay.closed_by_client == 1

        assert await eventually(connection_closed)  # its late answer can never be read as the next one's
        assert bytes(relay.held).count(b"EVALSHA") == 1  # sent once: not retried

        relay.stalled = False
        assert (await limits_store.check("team-a", limits, Ask())).admitted
        assert relay.accepted == 2  # on a new connection
    finally:
        await limits_store.close()


async def test_a_batch_answers_each_call_in_its_place_a_failing_script_failing_alone(
        redis_url: str, key_prefix: str) -> None:
    store = await RedisStore.open(StateConfig(backend="redis", url=Secret(redis_url), key_prefix=key_prefix))
    try:
        batches = ScriptBatches(store._client, CallGuard("redis", 5.0, (RedisError, OSError)))
        # A script this Redis has never seen (its text is new): the batch gets NOSCRIPT for each call
        # and sends them once more in full; one call's own error fails that call alone.
        script = store._client.register_script(
            f"-- {secrets.token_hex(8)}\nif ARGV[1] == 'bad' then return redis.error_reply('refused') end "
            "return ARGV[1] .. KEYS[1]")
        calls = [batches.call("limit_read", script, packed([1, "k"]), [word]) for word in ("a", "bad", "c")]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert outcomes[0] == b"ak" and outcomes[2] == b"ck"
        assert isinstance(outcomes[1], StoreError) and "refused" in str(outcomes[1])
        # Known now: the next batch needs no second write.
        assert await batches.call("limit_read", script, packed([1, "k"]), ["d"]) == b"dk"
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("require, outcome", [("", "1 skipped"), ("1", "1 error")])
def test_without_redis_its_tests_are_skipped_unless_redis_is_required(tmp_path: Path, require: str,
                                                                     outcome: str) -> None:
    # A port nobody listens on stands for a machine without Redis.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**CLEAN_ENV, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "TENSORWALL_REQUIRE_REDIS": require}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             f"{Path(__file__)}::test_every_key_is_under_the_prefix"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert (result.returncode == 0) is (not require)
