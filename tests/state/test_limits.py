"""The limit counters in each backend (SQLite's limits.db, Redis's scripts): the same decisions as
limits.py's pure functions, atomic under concurrent callers, and shared by two stores on one file
or one Redis (as by two workers or two instances): N callers at once never get more than the limit."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from tensorwall_proxy.config import Limits, StateConfig
from tensorwall_proxy.limits import Ask, LimitStore, Verdict
from tensorwall_proxy.state.holder import open_limits
from tests.conftest import redis_keys
from tests.state.conftest import Errors


async def _open(config: StateConfig, count: int = 1) -> list[LimitStore]:
    return [await open_limits(config, Errors()) for _ in range(count)]


async def _close(stores: list[LimitStore]) -> None:
    for store in stores:
        await store.close()


async def _at_once(stores: list[LimitStore], principal: str, limits: Limits, asks: list[Ask]) -> list[Verdict]:
    return list(await asyncio.gather(*(stores[i % len(stores)].check(principal, limits, ask)
                                       for i, ask in enumerate(asks))))


async def test_a_burst_of_callers_on_two_stores_gets_exactly_the_limit(state_config: StateConfig) -> None:
    stores = await _open(state_config, 2)
    try:
        limits = Limits(requests_per_minute=12)
        verdicts = await _at_once(stores, "team-a", limits, [Ask()] * 40)
        assert sum(v.admitted for v in verdicts) == 12
        refused = [v for v in verdicts if not v.admitted]
        # The next one is due 60/12 s after the burst, less the moments the burst took.
        assert all(4.0 < v.retry_after <= 5.0 and v.reason == "requests_per_minute" for v in refused)
        # Another principal has counters of its own.
        assert (await stores[0].check("team-b", limits, Ask())).admitted
    finally:
        await _close(stores)


async def test_tokens_reserved_at_once_never_exceed_the_bucket(state_config: StateConfig) -> None:
    stores = await _open(state_config, 2)
    try:
        limits = Limits(tokens_per_minute=1000, tokens_per_day=100_000)
        verdicts = await _at_once(stores, "team-a", limits, [Ask(tokens=300)] * 10)
        assert sum(v.admitted for v in verdicts) == 3
        admitted = next(v for v in verdicts if v.admitted)
        # Corrected to usage: three reservations of 300 that used 50 each give 750 back.
        for _ in range(3):
            await stores[1].settle("team-a", limits, 300, 50, admitted.day, None)
        after = await stores[0].check("team-a", limits, Ask(tokens=800))
        assert after.admitted and after.tokens is not None
        assert 49 <= after.tokens.remaining <= 51  # 1000 - 150 - 800, plus the refill of a few moments
    finally:
        await _close(stores)


async def test_leases_are_exact_and_released(state_config: StateConfig) -> None:
    stores = await _open(state_config, 2)
    try:
        limits = Limits(concurrent=3)
        asks = [Ask(lease=f"lease-{i}") for i in range(10)]
        verdicts = await _at_once(stores, "team-a", limits, asks)
        held = [ask.lease for ask, v in zip(asks, verdicts, strict=True) if v.admitted]
        assert len(held) == 3
        await stores[1].renew("team-a", [lease for lease in held if lease is not None])
        assert not (await stores[0].check("team-a", limits, Ask(lease="late"))).admitted
        await stores[0].settle("team-a", limits, 0, 0, 0, held[0])
        assert (await stores[1].check("team-a", limits, Ask(lease="late"))).admitted
    finally:
        await _close(stores)


async def test_a_settlement_lands_though_its_caller_leaves_while_it_waits(state_config: StateConfig) -> None:
    stores = await _open(state_config, 2)
    try:
        limits = Limits(concurrent=1, tokens_per_minute=1000)
        verdict = await stores[0].check("team-a", limits, Ask(tokens=600, lease="only"))
        assert verdict.admitted
        # The request's task is cancelled (its caller left) the moment the settlement is queued.
        waiting = asyncio.ensure_future(stores[0].settle("team-a", limits, 600, 100, verdict.day, "only"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # The settlement still ran: the lease is free and 500 tokens came back, for the other store too.
        after = await stores[1].check("team-a", limits, Ask(tokens=800, lease="next"))
        assert after.admitted and after.tokens is not None
        assert 99 <= after.tokens.remaining <= 102  # 1000 - 100 - 800, plus a few moments' refill
    finally:
        await _close(stores)


async def test_calls_queued_together_are_decided_one_after_another(state_config: StateConfig) -> None:
    # Checks and settlements queued in the same moment share one transaction (SQLite) or one batch
    # (Redis); each still sees the ones before it: a lease settled in the batch frees its place.
    stores = await _open(state_config, 1)
    try:
        limits = Limits(concurrent=2)
        first = await _at_once(stores, "team-a", limits, [Ask(lease="a"), Ask(lease="b")])
        assert all(v.admitted for v in first)
        settled = stores[0].settle("team-a", limits, 0, 0, 0, "a")
        verdicts = await asyncio.gather(settled, *(stores[0].check("team-a", limits, Ask(lease=f"c{i}"))
                                                   for i in range(3)))
        assert sum(v.admitted for v in verdicts[1:]) == 1  # "a" went first, so one of three gets its place
    finally:
        await _close(stores)


async def test_the_day_budget_is_shared(state_config: StateConfig) -> None:
    stores = await _open(state_config, 2)
    try:
        limits = Limits(tokens_per_day=500)
        verdicts = await _at_once(stores, "team-a", limits, [Ask(tokens=200)] * 6)
        assert sum(v.admitted for v in verdicts) == 2
        refused = next(v for v in verdicts if not v.admitted)
        assert refused.reason == "tokens_per_day"
        assert refused.retry_after == pytest.approx((refused.day + 1) * 86400 - refused.now, abs=0.01)
    finally:
        await _close(stores)


async def test_sqlite_keeps_the_counters_in_limits_db(tmp_path: Path) -> None:
    config = StateConfig(backend="sqlite", path=str(tmp_path / "state"), timeout_ms=2000)
    stores = await _open(config)
    try:
        assert (await stores[0].check("team-a", Limits(requests_per_minute=1), Ask())).admitted
    finally:
        await _close(stores)
    assert (tmp_path / "state" / "limits.db").is_file()
    reopened = await _open(replace(config))
    try:
        assert not (await reopened[0].check("team-a", Limits(requests_per_minute=1), Ask())).admitted
    finally:
        await _close(reopened)


async def test_redis_keys_share_the_principals_hash_tag(redis_url: str, key_prefix: str) -> None:
    from tensorwall_proxy.config import Secret

    config = StateConfig(backend="redis", url=Secret(redis_url), key_prefix=key_prefix, timeout_ms=2000)
    stores = await _open(config)
    try:
        limits = Limits(requests_per_minute=5, tokens_per_minute=100, concurrent=2)
        assert (await stores[0].check("team-a", limits, Ask(tokens=10, lease="x"))).admitted
    finally:
        await _close(stores)
    keys = [key.decode() for key in redis_keys(key_prefix)]
    assert keys == [f"{key_prefix}{{tw:team-a}}", f"{key_prefix}{{tw:team-a}}:leases"]


async def test_the_counters_read_back_as_they_stand(state_config: StateConfig) -> None:
    from tensorwall_proxy.limits import standing

    stores = await _open(state_config)
    try:
        limits = Limits(requests_per_minute=10, tokens_per_minute=1000, tokens_per_day=5000, concurrent=4)
        for i in range(3):
            assert (await stores[0].check("team-a", limits, Ask(tokens=100, lease=f"l{i}"))).admitted
        counters, now = await stores[0].counters("team-a")
        now_standing = standing(counters, limits, now)
        assert now_standing.requests is not None and now_standing.requests.remaining == 7
        assert now_standing.tokens_per_minute is not None and 700 <= now_standing.tokens_per_minute.remaining <= 705
        assert now_standing.tokens_today == 300 and now_standing.leases == 3
        fresh, _ = await stores[0].counters("nobody")
        assert standing(fresh, limits, now).leases == 0 and fresh.tat == 0
    finally:
        await _close(stores)
