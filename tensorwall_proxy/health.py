"""Per-(endpoint, credential) health: the 429 cooldown, and ejection after consecutive failures.

Pure: no I/O, no sleeping, no aiohttp; time comes from an injectable clock so tests step it by hand.

Health is keyed by (provider, upstream model, credential digest). When an attempt carried the
caller's own key the digest is that key's, so one tenant's exhausted key never cools an endpoint
for everyone else; a server-side credential has digest ``None`` and cools the endpoint itself
(DESIGN §5). Only digests are kept, never keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Literal

HealthKey = tuple[str, str, str | None]  # (provider name, upstream model, credential digest or None)
BlockReason = Literal["cooling", "ejected"]

# A Retry-After of an hour from a misbehaving upstream must not take an endpoint away for an hour.
MAX_COOLDOWN_SECONDS = 300.0
# Ejection: this many consecutive failures (5xx, timeout, connect) take a pair out of rotation for
# EJECT_SECONDS, doubled for each further ejection without a success in between, capped. Five is
# enough to ignore a blip, few enough that a dead endpoint stops costing callers a timeout each.
EJECT_AFTER = 5
EJECT_SECONDS = 5.0
MAX_EJECT_SECONDS = 300.0
# What the book forgets, so callers' digests (one per key they send) cannot grow it without bound.
# An entry untouched (no failure, no 429) for STALE_SECONDS is dropped: twice the longest ejection
# or cooldown, so its block is long over and a fresh streak starting from one ejection is fair.
STALE_SECONDS = 600.0
# And at most this many entries per kind (about 300 bytes each): past it the least recently
# touched goes, a caller's key first (its cost is one more 429 or failure for that caller only).
MAX_CALLER_ENTRIES = 20_000
MAX_SERVER_ENTRIES = 1_000
# Stale entries dropped per touch: more than one, so the book shrinks faster than it can grow,
# and few, so no request pays for a long sweep.
_PRUNE_STEP = 4
# Under the cap, how many of the least recently touched are looked at for one whose block is over.
_EVICT_LOOK = 8


@dataclass(frozen=True, slots=True)
class Block:
    """Why and until when (clock time) an endpoint is skipped."""

    until: float
    reason: BlockReason


@dataclass(slots=True)
class _State:
    cooling_until: float = 0.0
    ejected_until: float = 0.0
    failures: int = 0  # consecutive, since the last success or ejection
    ejections: int = 0  # consecutive, since the last success
    touched: float = 0.0  # the last failure or 429


_Shelf = OrderedDict[HealthKey, _State]  # least recently touched first


class HealthBook:
    """The health of the (endpoint, credential) pairs that failed or were told to wait lately.

    Two shelves: the server's own credentials (few, bounded by the configuration; the health gauge
    walks them) and callers' keys by digest (as many as callers send; never walked whole). Each is
    kept in the order entries were last touched, so forgetting the stale ones costs a look at the
    front, a few at a time, as new failures arrive.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 max_cooldown: float = MAX_COOLDOWN_SECONDS, *, max_callers: int = MAX_CALLER_ENTRIES,
                 max_servers: int = MAX_SERVER_ENTRIES) -> None:
        self._clock = clock
        self._max_cooldown = max_cooldown
        # Long enough that a forgotten entry was unblocked well before: its block ends at most the
        # longest cooldown or ejection after its last touch.
        self._stale = max(STALE_SECONDS, 2 * max_cooldown, 2 * MAX_EJECT_SECONDS)
        self._states: _Shelf = OrderedDict()  # server-side credentials (digest None)
        self._callers: _Shelf = OrderedDict()  # callers' keys, by digest
        self._max_servers = max_servers
        self._max_callers = max_callers

    def __len__(self) -> int:
        """How many pairs the book holds now."""
        return len(self._states) + len(self._callers)

    def now(self) -> float:
        """The book's clock."""
        return self._clock()

    def cool(self, key: HealthKey, seconds: float) -> float:
        """Cool a pair down after a 429 for ``seconds`` (capped); returns the seconds applied."""
        seconds = min(max(seconds, 0.0), self._max_cooldown)
        state = self._state(key)
        state.cooling_until = max(state.cooling_until, self._clock() + seconds)
        return seconds

    def succeeded(self, key: HealthKey) -> None:
        """An attempt on the pair succeeded: failures and ejections start again from zero."""
        state = (self._states if key[2] is None else self._callers).get(key)
        if state is not None:
            state.failures = 0
            state.ejections = 0

    def failed(self, key: HealthKey) -> None:
        """An attempt failed with a 5xx, a timeout or a connect error; enough in a row eject the pair."""
        state = self._state(key)
        state.failures += 1
        if state.failures >= EJECT_AFTER:
            state.failures = 0
            state.ejections += 1
            # The exponent is capped too: after a long outage 2 ** ejections would overflow a float.
            seconds = min(EJECT_SECONDS * 2 ** min(state.ejections - 1, 16), MAX_EJECT_SECONDS)
            state.ejected_until = self._clock() + seconds

    def block(self, key: HealthKey) -> Block | None:
        """The pair's block, or None while it is healthy; when cooling and ejected, the later one."""
        state = (self._states if key[2] is None else self._callers).get(key)
        if state is None:
            return None
        now = self._clock()
        if state.cooling_until <= now and state.ejected_until <= now:
            return None
        if state.ejected_until > state.cooling_until:
            return Block(state.ejected_until, "ejected")
        return Block(state.cooling_until, "cooling")

    def server_states(self) -> list[tuple[HealthKey, str]]:
        """The server-side credentials' pairs with their state now (for the health gauge); callers'
        digests are not walked (they never become labels)."""
        return [(key, self.status(key)) for key in list(self._states)]

    def status(self, key: HealthKey) -> Literal["healthy", "cooling", "ejected"]:
        """healthy / cooling / ejected, for metrics and `route`."""
        block = self.block(key)
        return "healthy" if block is None else block.reason

    def _state(self, key: HealthKey) -> _State:
        """The pair's entry, created if need be, marked as touched now."""
        shelf, limit = (self._states, self._max_servers) if key[2] is None else (self._callers, self._max_callers)
        now = self._clock()
        self._prune(shelf, now)
        state = shelf.get(key)
        if state is None:
            if len(shelf) >= limit:
                self._evict(shelf, now)
            state = shelf[key] = _State()
        else:
            shelf.move_to_end(key)
        state.touched = now
        return state

    def _prune(self, shelf: _Shelf, now: float) -> None:
        """Forget up to a few entries untouched for the stale time (the front holds the oldest)."""
        for _ in range(_PRUNE_STEP):
            if not shelf:
                return
            key, state = next(iter(shelf.items()))
            if state.touched + self._stale > now:
                return
            del shelf[key]

    def _evict(self, shelf: _Shelf, now: float) -> None:
        """The shelf is full: forget the least recently touched entry whose block is over, among
        the first few; if all of those are blocked, the least recently touched one."""
        for key, state in islice(shelf.items(), _EVICT_LOOK):
            if state.cooling_until <= now and state.ejected_until <= now:
                del shelf[key]
                return
        shelf.popitem(last=False)


class RetryBudget:
    """Keeps retries and fallbacks to a share of the traffic, so failures do not multiply load.

    Every request deposits ``ratio`` of a token, and ``min_per_second`` tokens trickle in with time
    so a quiet gateway can still retry; each retry or fallback spends one. The balance is capped
    (ten seconds of the trickle plus a hundred), so a long calm does not buy an unbounded burst.
    """

    def __init__(self, ratio: float = 0.2, min_per_second: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ratio = ratio
        self._rate = min_per_second
        self._clock = clock
        self._cap = 10.0 * min_per_second + 100.0
        self._tokens = self._cap
        self._at = clock()

    def deposit(self) -> None:
        """A request arrived."""
        self._refill()
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def spend(self) -> bool:
        """Whether one more retry or fallback may go out now (and take a token if so)."""
        self._refill()
        if self._tokens >= 1.0 - 1e-9:  # fifty deposits of 0.2 are one token less a rounding error
            self._tokens -= 1.0
            return True
        return False

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._cap, self._tokens + (now - self._at) * self._rate)
        self._at = now


def when_all_blocked(blocks: Sequence[Block]) -> tuple[int | None, float]:
    """What to do when no endpoint is healthy (DESIGN §5).

    Returns ``(index, until)``: every endpoint cooling from a 429 → ``(None, the clock time the
    first cooldown ends)``, and the caller gets a 429 at once; some ejected for failures → the
    index of the one whose ejection ends first, which is tried anyway.
    """
    ejected = [(b.until, i) for i, b in enumerate(blocks) if b.reason == "ejected"]
    if ejected:
        return min(ejected)[1], 0.0
    return None, min(b.until for b in blocks)
