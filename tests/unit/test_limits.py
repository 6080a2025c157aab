"""The limits' arithmetic (limits.py), pure, on an injected clock: GCRA's exact burst and spacing, the
minute bucket's reservation and correction, the day's budget, leases, the headers and the estimate."""

from __future__ import annotations

import asyncio
import math

import pytest

from tensorwall_proxy.config import Limits, Principal
from tensorwall_proxy.errors import GatewayError
from tensorwall_proxy.limits import (
    DAY,
    LEASE_SECONDS,
    Admission,
    Ask,
    Counters,
    Limiter,
    MemoryLimits,
    RateLimited,
    Verdict,
    anthropic_headers,
    decide,
    duration,
    estimate,
    openai_headers,
    reservation,
    settle,
)
from tensorwall_proxy.state import StoreError

T0 = 1_780_000_000.0  # a Unix time well inside a UTC day
T0 = (T0 // DAY) * DAY + 3600.0  # 01:00 UTC


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rpm", [1, 3, 7, 60, 600])
def test_gcra_admits_a_burst_of_n_then_one_every_60_over_n_seconds(rpm: int) -> None:
    counters, limits = Counters(), Limits(requests_per_minute=rpm)
    admitted = [decide(counters, limits, Ask(), T0) for _ in range(rpm + 3)]
    assert [v.admitted for v in admitted] == [True] * rpm + [False] * 3
    interval = 60 / rpm
    refused = admitted[rpm]
    assert refused.retry_after == pytest.approx(interval)
    assert refused.reason == "requests_per_minute"
    # Just before the interval: still refused; at it: exactly one more, then refused again.
    assert not decide(counters, limits, Ask(), T0 + interval - 0.001).admitted
    assert decide(counters, limits, Ask(), T0 + interval).admitted
    assert not decide(counters, limits, Ask(), T0 + interval).admitted
    # Never a second burst at a window edge: a minute on, only what the spacing allows.
    later = [decide(counters, limits, Ask(), T0 + 60).admitted for _ in range(rpm + 1)]
    assert sum(later) == rpm - 1


def test_gcra_refusal_changes_nothing_and_headers_count_down() -> None:
    counters, limits = Counters(), Limits(requests_per_minute=4)
    remaining = [decide(counters, limits, Ask(), T0).requests for _ in range(4)]
    assert [q.remaining for q in remaining if q] == [3, 2, 1, 0]
    last = remaining[-1]
    assert last is not None and last.reset == pytest.approx(60.0)
    tat = counters.tat
    refused = decide(counters, limits, Ask(), T0 + 1)
    assert not refused.admitted and counters.tat == tat
    assert refused.retry_after == pytest.approx(14.0)


def test_the_bucket_reserves_and_is_corrected_to_usage() -> None:
    counters, limits = Counters(), Limits(tokens_per_minute=1000)
    first = decide(counters, limits, Ask(tokens=600), T0)
    assert first.admitted and first.tokens is not None and first.tokens.remaining == 400
    refused = decide(counters, limits, Ask(tokens=600), T0)
    assert not refused.admitted and refused.reason == "tokens_per_minute"
    assert refused.retry_after == pytest.approx(200 * 60 / 1000)
    settle(counters, limits, 600, 100, first.day, None, T0)  # the provider used 100
    assert decide(counters, limits, Ask(tokens=600), T0).admitted
    assert counters.level == pytest.approx(300.0)


def test_the_balance_may_go_negative_and_refills_at_the_rate() -> None:
    counters, limits = Counters(), Limits(tokens_per_minute=1000)
    verdict = decide(counters, limits, Ask(tokens=500), T0)
    settle(counters, limits, 500, 2500, verdict.day, None, T0)  # used far more than reserved
    assert counters.level == pytest.approx(-1500.0)
    refused = decide(counters, limits, Ask(tokens=10), T0)
    assert not refused.admitted and refused.retry_after == pytest.approx(1510 * 60 / 1000)
    assert decide(counters, limits, Ask(tokens=10), T0 + 1510 * 60 / 1000).admitted


def test_a_reservation_larger_than_the_bucket_is_admitted_only_when_it_is_full() -> None:
    counters, limits = Counters(), Limits(tokens_per_minute=1000)
    assert decide(counters, limits, Ask(tokens=5000), T0).admitted
    assert counters.level == pytest.approx(-4000.0)
    refused = decide(counters, limits, Ask(tokens=5000), T0 + 60)
    assert not refused.admitted and refused.retry_after == pytest.approx(4 * 60)  # until it is full again
    assert decide(counters, limits, Ask(tokens=5000), T0 + 300).admitted


def test_the_day_budget_resets_at_utc_midnight() -> None:
    counters, limits = Counters(), Limits(tokens_per_day=1000)
    assert decide(counters, limits, Ask(tokens=900), T0).admitted
    refused = decide(counters, limits, Ask(tokens=200), T0 + 10)
    assert not refused.admitted and refused.reason == "tokens_per_day"
    midnight = (T0 // DAY + 1) * DAY
    assert refused.retry_after == pytest.approx(midnight - (T0 + 10))
    assert decide(counters, limits, Ask(tokens=200), midnight).admitted


def test_the_day_budget_is_corrected_on_its_own_day_only() -> None:
    counters, limits = Counters(), Limits(tokens_per_day=1000)
    verdict = decide(counters, limits, Ask(tokens=900), T0)
    settle(counters, limits, 900, 100, verdict.day, None, T0)
    assert counters.used == pytest.approx(100.0)
    assert decide(counters, limits, Ask(tokens=900), T0).admitted


def test_leases_are_released_and_expire() -> None:
    counters, limits = Counters(), Limits(concurrent=2)
    one = decide(counters, limits, Ask(lease="a"), T0)
    two = decide(counters, limits, Ask(lease="b"), T0)
    assert one.admitted and two.admitted
    refused = decide(counters, limits, Ask(lease="c"), T0)
    assert not refused.admitted and refused.reason == "concurrent"
    settle(counters, limits, 0, 0, one.day, "a", T0)
    assert decide(counters, limits, Ask(lease="c"), T0).admitted
    # A process that died holding its leases: they are gone once LEASE_SECONDS pass unrenewed.
    assert not decide(counters, limits, Ask(lease="d"), T0 + LEASE_SECONDS - 1).admitted
    assert decide(counters, limits, Ask(lease="d"), T0 + LEASE_SECONDS + 1).admitted


def test_a_refusal_in_one_dimension_charges_no_other() -> None:
    counters, limits = Counters(), Limits(requests_per_minute=10, tokens_per_minute=100)
    assert decide(counters, limits, Ask(tokens=100), T0).admitted
    tat = counters.tat
    assert not decide(counters, limits, Ask(tokens=50), T0).admitted
    assert counters.tat == tat


def test_counters_survive_their_json_and_unreadable_json_is_fresh() -> None:
    counters = Counters(tat=int(T0 * 1_000_000), level=-5.5, updated=T0, day=3, used=7.0, leases={"x": T0 + 1})
    assert Counters.loads(counters.dumps()) == counters
    assert Counters.loads(b"not json") == Counters()
    assert Counters.loads(None) == Counters()


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (0.2, "1s"), (2, "2s"), (90, "1m30s"), (60, "1m"),
                                                (3723, "1h2m3s"), (7200, "2h")])
def test_durations_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_headers_in_either_dialect() -> None:
    counters = Counters()
    verdict = decide(counters, Limits(requests_per_minute=2, tokens_per_minute=100), Ask(tokens=30), T0 + 0.5)
    assert openai_headers(verdict) == {
        "x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "70", "x-ratelimit-reset-tokens": "18s"}
    anthropic = anthropic_headers(verdict)
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "1"
    assert anthropic["anthropic-ratelimit-tokens-limit"] == "100"
    reset = math.ceil(T0 + 0.5 + 30)
    import datetime
    assert anthropic["anthropic-ratelimit-requests-reset"] == \
        datetime.datetime.fromtimestamp(reset, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_day_tells_the_tokens_headers_without_a_minute_bucket() -> None:
    verdict = decide(Counters(), Limits(tokens_per_day=1000), Ask(tokens=10), T0)
    assert openai_headers(verdict)["x-ratelimit-remaining-tokens"] == "990"


def test_a_429_longer_than_a_minute_says_not_to_retry() -> None:
    long = Verdict(False, 3600.2, T0, 0, reason="tokens_per_day")
    error = RateLimited(long, {"x-ratelimit-limit-tokens": "5"})
    assert error.status == 429 and error.code == "gateway_rate_limited"
    assert error.headers() == {"x-ratelimit-limit-tokens": "5", "Retry-After": "3601", "x-should-retry": "false"}
    short = RateLimited(Verdict(False, 0.3, T0, 0, reason="requests_per_minute"), {})
    assert short.headers() == {"Retry-After": "1"}


def test_the_estimate_is_text_characters_over_four_rounded_up() -> None:
    body = {"messages": [{"role": "system", "content": "abcde"},
                         {"role": "user", "content": [{"type": "text", "text": "xyz"},
                                                      {"type": "image_url", "image_url": {"url": "data:..."}}]}]}
    assert estimate(body) == 2  # 8 characters
    assert estimate({"input": ["abcd", "e"]}) == 2
    assert estimate({"messages": []}) == 0


def test_the_reservation_takes_the_requests_cap_then_the_routes_then_the_default() -> None:
    body = {"messages": [{"role": "user", "content": "a" * 40}]}
    assert reservation({**body, "max_tokens": 50}, 200, 4096) == 60
    assert reservation({**body, "max_completion_tokens": 70}, 200, 4096) == 80
    assert reservation({**body, "max_output_tokens": 90}, 200, 4096) == 100
    assert reservation(body, 200, 4096) == 210
    assert reservation(body, None, 4096) == 4106
    assert reservation(body, None, 4096, output=False) == 10


class Opener:
    """A store opener for the Limiter: a working MemoryLimits, or one that fails."""

    def __init__(self, store: MemoryLimits | None) -> None:
        self._store = store

    async def store(self) -> MemoryLimits:
        if self._store is None:
            raise StoreError("down")
        return self._store

    async def close(self) -> None:
        pass


def test_the_limiter_counts_in_the_process_when_the_store_fails_open() -> None:
    fallbacks: list[str] = []
    clock = Clock()
    limiter = Limiter(Opener(None), "open", fallbacks.append, clock)
    principal = Principal("sha256:" + "a" * 64, name="team", limits=Limits(requests_per_minute=2))
    assert principal.limits is not None

    async def run() -> list[bool]:
        results = [await limiter.admit(principal, principal.limits, 0) for _ in range(3)]
        await limiter.close()
        return [isinstance(r, Admission) for r in results]

    assert asyncio.run(run()) == [True, True, False]
    assert fallbacks == ["open"] * 3


def test_the_limiter_refuses_with_503_when_the_store_fails_closed() -> None:
    fallbacks: list[str] = []
    limiter = Limiter(Opener(None), "closed", fallbacks.append)
    principal = Principal("sha256:" + "a" * 64, limits=Limits(requests_per_minute=2))
    assert principal.limits is not None
    with pytest.raises(GatewayError) as caught:
        asyncio.run(limiter.admit(principal, principal.limits, 0))
    assert caught.value.status == 503 and caught.value.code == "state_unavailable"
    assert fallbacks == ["closed"]


def test_the_limiter_releases_leases_and_corrects_tokens() -> None:
    clock = Clock()
    store = MemoryLimits(clock)
    limiter = Limiter(Opener(store), "open", None, clock)
    limits = Limits(tokens_per_minute=1000, concurrent=1)
    principal = Principal("sha256:" + "b" * 64, limits=limits)

    async def run() -> None:
        first = await limiter.admit(principal, limits, 400)
        assert isinstance(first, Admission)
        assert isinstance(await limiter.admit(principal, limits, 1), Verdict)  # its one lease is taken
        await limiter.finish(first, 100)
        second = await limiter.admit(principal, limits, 1)
        assert isinstance(second, Admission) and second.verdict.tokens is not None
        assert second.verdict.tokens.remaining == 899
        await limiter.finish(second, None)  # usage unknown: the reservation stands
        await limiter.close()

    asyncio.run(run())
    counters = store.kept[principal.id]
    assert counters.leases == {} and counters.level == pytest.approx(899.0)
