"""Unit tests for tensorwall_proxy/health.py: 429 cooldowns and ejection, per (endpoint, credential).

Pure: the book gets a fake clock that the tests step by hand; nothing sleeps.
"""

from __future__ import annotations

import pytest

from tensorwall_proxy.health import (
    MAX_CALLER_ENTRIES,
    MAX_COOLDOWN_SECONDS,
    STALE_SECONDS,
    Block,
    HealthBook,
    HealthKey,
    when_all_blocked,
)

OPENAI: HealthKey = ("openai", "gpt-4o", None)
TENANT_A: HealthKey = ("openai", "gpt-4o", "sha256:" + "a" * 64)
TENANT_B: HealthKey = ("openai", "gpt-4o", "sha256:" + "b" * 64)

# DESIGN §5 does not fix how many consecutive failures eject; any sane threshold is at most this.
EJECT_WITHIN = 10


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def book(clock: FakeClock) -> HealthBook:
    return HealthBook(clock=clock)


def fail_until_ejected(book: HealthBook, key: HealthKey) -> int:
    """Fail ``key`` until it is ejected; the number of failures it took."""
    for count in range(1, EJECT_WITHIN + 1):
        book.failed(key)
        if book.status(key) == "ejected":
            return count
    pytest.fail(f"{EJECT_WITHIN} consecutive failures did not eject {key} (DESIGN §5: consecutive "
                "5xx/timeouts/connect errors eject for a growing time)")


# --- cooldowns -------------------------------------------------------------------------------------


def test_a_key_never_seen_is_healthy(book: HealthBook) -> None:
    assert book.block(OPENAI) is None
    assert book.status(OPENAI) == "healthy"


def test_now_is_the_injected_clock(book: HealthBook, clock: FakeClock) -> None:
    assert book.now() == 1000.0
    clock.advance(2.5)
    assert book.now() == 1002.5


def test_cool_blocks_until_the_time_has_passed(book: HealthBook, clock: FakeClock) -> None:
    assert book.cool(OPENAI, 30) == 30
    assert book.block(OPENAI) == Block(until=1030.0, reason="cooling")
    assert book.status(OPENAI) == "cooling"
    clock.advance(29.9)
    assert book.status(OPENAI) == "cooling"
    clock.advance(0.1)
    assert book.block(OPENAI) is None
    assert book.status(OPENAI) == "healthy"


def test_cool_takes_fractions_of_a_second(book: HealthBook, clock: FakeClock) -> None:
    assert book.cool(OPENAI, 0.25) == 0.25
    clock.advance(0.2)
    assert book.status(OPENAI) == "cooling"
    clock.advance(0.05)
    assert book.status(OPENAI) == "healthy"


def test_cool_is_capped_at_300_seconds(book: HealthBook, clock: FakeClock) -> None:
    assert MAX_COOLDOWN_SECONDS == 300
    assert book.cool(OPENAI, 3600) == 300
    block = book.block(OPENAI)
    assert block is not None and block.until == 1300.0
    clock.advance(300)
    assert book.status(OPENAI) == "healthy"


def test_the_cap_is_configurable(clock: FakeClock) -> None:
    book = HealthBook(clock=clock, max_cooldown=5)
    assert book.cool(OPENAI, 60) == 5
    clock.advance(5)
    assert book.status(OPENAI) == "healthy"


@pytest.mark.parametrize("seconds", [0, -10])
def test_a_cooldown_of_zero_or_less_blocks_nothing(book: HealthBook, seconds: float) -> None:
    assert book.cool(OPENAI, seconds) == 0
    assert book.status(OPENAI) == "healthy"


def test_the_longer_of_two_cooldowns_wins(book: HealthBook, clock: FakeClock) -> None:
    book.cool(OPENAI, 100)
    book.cool(OPENAI, 10)
    block = book.block(OPENAI)
    assert block is not None and block.until == 1100.0

    book.cool(TENANT_A, 10)
    book.cool(TENANT_A, 100)
    block = book.block(TENANT_A)
    assert block is not None and block.until == 1100.0


def test_a_later_cooldown_extends_from_its_own_time(book: HealthBook, clock: FakeClock) -> None:
    book.cool(OPENAI, 10)
    clock.advance(8)
    book.cool(OPENAI, 10)
    clock.advance(9)
    assert book.status(OPENAI) == "cooling"
    clock.advance(1)
    assert book.status(OPENAI) == "healthy"


def test_keys_with_different_credential_digests_are_independent(book: HealthBook) -> None:
    book.cool(TENANT_A, 60)
    assert book.status(TENANT_A) == "cooling"
    assert book.status(TENANT_B) == "healthy"
    assert book.status(OPENAI) == "healthy"
    book.cool(OPENAI, 60)
    assert book.status(TENANT_B) == "healthy"


def test_keys_of_different_endpoints_are_independent(book: HealthBook) -> None:
    book.cool(("azure", "gpt4-deployment", None), 60)
    assert book.status(("azure", "gpt4-deployment", None)) == "cooling"
    assert book.status(("azure", "gpt4o-deployment", None)) == "healthy"
    assert book.status(("azure-eu", "gpt4-deployment", None)) == "healthy"


# --- failures and successes ------------------------------------------------------------------------


def test_one_failure_does_not_take_the_endpoint_away(book: HealthBook) -> None:
    book.failed(OPENAI)
    assert book.status(OPENAI) == "healthy"
    assert book.block(OPENAI) is None


def test_success_on_a_key_never_seen_is_harmless(book: HealthBook) -> None:
    book.succeeded(OPENAI)
    assert book.status(OPENAI) == "healthy"


def test_success_after_a_failure_leaves_the_key_healthy(book: HealthBook) -> None:
    book.failed(OPENAI)
    book.succeeded(OPENAI)
    assert book.status(OPENAI) == "healthy"


def test_failures_and_successes_do_not_end_a_cooldown(book: HealthBook, clock: FakeClock) -> None:
    book.cool(OPENAI, 30)
    book.failed(OPENAI)
    book.succeeded(OPENAI)
    assert book.status(OPENAI) == "cooling"


def test_consecutive_failures_eject_the_key_for_a_while(book: HealthBook, clock: FakeClock) -> None:
    """DESIGN §5: consecutive 5xx/timeouts/connect errors eject for a growing time."""
    fail_until_ejected(book, OPENAI)
    block = book.block(OPENAI)
    assert block is not None
    assert block.reason == "ejected"
    assert block.until > clock.now
    assert book.status(TENANT_A) == "healthy"
    clock.advance(block.until - clock.now)
    assert book.status(OPENAI) == "healthy"


def test_ejection_grows_when_failures_continue(book: HealthBook, clock: FakeClock) -> None:
    fail_until_ejected(book, OPENAI)
    first = book.block(OPENAI)
    assert first is not None
    first_length = first.until - clock.now
    clock.advance(first_length)
    fail_until_ejected(book, OPENAI)
    second = book.block(OPENAI)
    assert second is not None
    assert second.until - clock.now > first_length


def test_a_success_resets_the_failure_streak(book: HealthBook, clock: FakeClock) -> None:
    threshold = fail_until_ejected(book, ("probe", "m", None))
    for _ in range(threshold - 1):
        book.failed(OPENAI)
    book.succeeded(OPENAI)
    for _ in range(threshold - 1):
        book.failed(OPENAI)
    assert book.status(OPENAI) == "healthy"


# --- pruning ---------------------------------------------------------------------------------------


def test_pruning_never_drops_a_live_cooldown(book: HealthBook, clock: FakeClock) -> None:
    book.cool(TENANT_A, 300)
    # Many callers' digests whose cooldowns are already over: the book prunes them as it grows.
    for i in range(25_000):
        book.cool(("openai", "gpt-4o", f"sha256:{i:064x}"), 0)
    clock.advance(1)
    assert book.status(TENANT_A) == "cooling"


def test_pruning_keeps_every_live_cooldown(book: HealthBook, clock: FakeClock) -> None:
    keys: list[HealthKey] = [("openai", "gpt-4o", f"sha256:{i:064x}") for i in range(12_000)]
    for key in keys:
        book.cool(key, 60)
    clock.advance(59)
    assert all(book.status(key) == "cooling" for key in keys)
    clock.advance(1)
    assert book.status(keys[0]) == "healthy"


def test_a_key_pruned_after_its_cooldown_can_cool_again(book: HealthBook, clock: FakeClock) -> None:
    book.cool(OPENAI, 1)
    clock.advance(2)
    for i in range(11_000):
        book.cool(("groq", "llama", f"sha256:{i:064x}"), 0)
    assert book.status(OPENAI) == "healthy"
    book.cool(OPENAI, 5)
    assert book.status(OPENAI) == "cooling"


def _caller(i: int) -> HealthKey:
    return ("openai", "gpt-4o", f"sha256:{i:064x}")


def test_callers_digests_that_failed_do_not_grow_the_book_without_bound(book: HealthBook,
                                                                         clock: FakeClock) -> None:
    """Every random caller key that fails leaves an entry; failures and ejections used to keep it forever."""
    for i in range(30_000):
        book.failed(_caller(i))
        clock.advance(0.001)
    for i in range(30_000, 32_000):
        fail_until_ejected(book, _caller(i))
    assert len(book) <= MAX_CALLER_ENTRIES
    # Well after the last of them, new traffic sweeps the stale ones away, a few per failure.
    clock.advance(STALE_SECONDS + 1)
    for i in range(100_000, 110_000):
        book.failed(_caller(i))
    assert len(book) <= 10_000
    assert book.status(_caller(31_999)) == "healthy"


def test_a_full_book_forgets_the_least_recently_touched_caller_first(clock: FakeClock) -> None:
    book = HealthBook(clock=clock, max_callers=100)
    fail_until_ejected(book, TENANT_A)
    for i in range(500):
        book.failed(_caller(i))
    assert len(book) == 100
    assert book.status(TENANT_A) == "ejected"  # a live block is kept while older, unblocked ones can go
    fail_until_ejected(book, TENANT_B)
    assert book.status(TENANT_B) == "ejected"
    assert book.status(OPENAI) == "healthy"


def test_server_credentials_are_kept_apart_from_callers_digests(book: HealthBook) -> None:
    fail_until_ejected(book, OPENAI)
    for i in range(MAX_CALLER_ENTRIES + 10):
        book.failed(_caller(i))
    assert book.server_states() == [(OPENAI, "ejected")]


def test_an_entry_stays_while_it_keeps_failing(book: HealthBook, clock: FakeClock) -> None:
    for _ in range(3):
        fail_until_ejected(book, TENANT_A)
        clock.advance(STALE_SECONDS - 1)
        for i in range(10):
            book.failed(_caller(i))
    # Three ejections in a row, none forgotten: the next one is longer than the first.
    book.failed(TENANT_A)
    assert book.block(TENANT_A) is None
    fail_until_ejected(book, TENANT_A)
    block = book.block(TENANT_A)
    assert block is not None and block.until - clock.now > 5.0


# --- when_all_blocked ------------------------------------------------------------------------------


def test_when_all_cooling_the_answer_is_none_and_the_earliest_end() -> None:
    blocks = [Block(1050.0, "cooling"), Block(1020.0, "cooling"), Block(1300.0, "cooling")]
    assert when_all_blocked(blocks) == (None, 1020.0)


def test_when_one_is_cooling_the_answer_is_its_end() -> None:
    assert when_all_blocked([Block(1005.5, "cooling")]) == (None, 1005.5)


def test_when_some_are_ejected_the_earliest_ejected_is_tried() -> None:
    blocks = [
        Block(1001.0, "cooling"),
        Block(1200.0, "ejected"),
        Block(1010.0, "cooling"),
        Block(1100.0, "ejected"),
        Block(1500.0, "ejected"),
    ]
    index, _ = when_all_blocked(blocks)
    assert index == 3


def test_a_single_ejected_endpoint_is_tried() -> None:
    index, _ = when_all_blocked([Block(1300.0, "cooling"), Block(1400.0, "ejected")])
    assert index == 1


# --- retry budget ----------------------------------------------------------------------------------


def test_retry_budget_lets_a_share_of_traffic_retry(clock: FakeClock) -> None:
    from tensorwall_proxy.health import RetryBudget

    budget = RetryBudget(ratio=0.2, min_per_second=1.0, clock=clock)
    spent = sum(budget.spend() for _ in range(1000))
    assert spent == 110  # the initial balance: ten seconds of the floor plus a hundred
    assert not budget.spend()
    for _ in range(50):
        budget.deposit()  # fifty requests earn ten retries
    assert sum(budget.spend() for _ in range(100)) == 10
    clock.advance(3)  # the floor trickles in: three more
    assert sum(budget.spend() for _ in range(100)) == 3


def test_retry_budget_balance_is_capped(clock: FakeClock) -> None:
    from tensorwall_proxy.health import RetryBudget

    budget = RetryBudget(ratio=0.5, min_per_second=2.0, clock=clock)
    clock.advance(10_000)
    for _ in range(10_000):
        budget.deposit()
    assert sum(budget.spend() for _ in range(1000)) == 120
