"""Principals' limits (DESIGN §13, §14): GCRA for requests, token buckets, a daily budget and
concurrency leases, pure over a store interface.

One principal's state is one ``Counters`` value; ``decide`` and ``settle`` are pure functions over
it and a time, and every backend runs them atomically: the in-process ``MemoryLimits`` (the fallback
of ``state.fail_mode: open``, and the tests' store), SQLite inside one transaction on its file's
thread (``state/sqlite.py``), Redis in one Lua script that mirrors them (``state/redis.py``). A
refusal changes nothing; an admission changes every limited dimension at once.

- ``requests_per_minute: N`` is GCRA with a burst of N: an idle principal may send N at once, then
  one more every 60/N seconds, never a second burst at a window's edge.
- ``tokens_per_minute: C`` is a bucket of C tokens refilled at C/60 a second. A request reserves its
  output cap plus an input estimate (characters of its text / 4, rounded up); when it ends the
  reservation is corrected to the provider's usage. The balance may go negative, so a large
  request cannot be exploited twice; one larger than the bucket is admitted when the bucket is full.
- ``tokens_per_day: D`` is a budget per UTC day, reserved and corrected the same way; a refusal's
  Retry-After is the next UTC midnight.
- ``concurrent: K`` is K leases; a lease is released when its request ends and expires
  ``LEASE_SECONDS`` after its last renewal, so a process that dies holding leases gives them back.

This module does no I/O of its own: ``Limiter`` awaits whichever store the gateway opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson

from .config import Limits, Principal
from .errors import GatewayError
from .state import StoreError

log = logging.getLogger(__name__)

MINUTE: Final = 60.0
DAY: Final = 86400
# A lease not renewed for this long belongs to a process that died; live ones are renewed every
# RENEW_SECONDS, a third of it, so two missed renewals still leave it standing.
LEASE_SECONDS: Final = 60.0
RENEW_SECONDS: Final = 20.0
# A concurrency refusal cannot know when a lease frees: the client is told to come back in a second.
CONCURRENT_RETRY: Final = 1.0
# Float slack in seconds, for rounding a wait up to whole seconds without float noise adding one.
EPSILON: Final = 1e-6
# Float slack in tokens, for "exactly at the limit" (a refill of exactly enough tokens lands a hair short).
TOKEN_SLACK: Final = 1e-3
MICROS: Final = 1_000_000


@dataclass(slots=True)
class Counters:
    """One principal's state, as a store keeps it."""

    # GCRA's theoretical arrival time, in whole microseconds: integers, so a burst of N spaced by
    # 60/N seconds adds up exactly (floats of Unix seconds drift by a ULP a step).
    tat: int = 0
    level: float | None = None  # the minute bucket's tokens; None: full
    updated: float = 0.0  # when ``level`` was last brought up to date
    day: int = 0  # the UTC day (days since the epoch) ``used`` belongs to
    used: float = 0.0  # tokens charged on ``day``
    leases: dict[str, float] = field(default_factory=dict)  # lease id → expiry (Unix seconds)

    def dumps(self) -> bytes:
        """The counters as JSON, in the field names the Redis script shares."""
        return orjson.dumps({"t": self.tat, "l": self.level, "u": self.updated, "d": self.day, "s": self.used,
                             "k": self.leases})

    @classmethod
    def loads(cls, raw: bytes | str | None) -> Counters:
        """Counters from ``dumps``' JSON; fresh ones for nothing (or for anything unreadable)."""
        if not raw:
            return cls()
        try:
            data = orjson.loads(raw)
            leases = data.get("k") or {}
            return cls(int(data.get("t", 0)), None if data.get("l") is None else float(data["l"]),
                       float(data.get("u", 0.0)), int(data.get("d", 0)), float(data.get("s", 0.0)),
                       {str(k): float(v) for k, v in leases.items()} if isinstance(leases, dict) else {})
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            return cls()


@dataclass(frozen=True, slots=True)
class Ask:
    """What one request asks of its principal's limits."""

    tokens: int = 0  # the reservation: input estimate + output cap (0 when tokens are not limited)
    lease: str | None = None  # the id of the lease it takes (when ``concurrent`` is limited)


@dataclass(frozen=True, slots=True)
class Quota:
    """One limited dimension after a decision, as the rate-limit headers tell it."""

    limit: int
    remaining: int
    reset: float  # seconds until the dimension is whole again


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision: admitted or not, how long to wait, and the quotas the headers carry."""

    admitted: bool
    retry_after: float  # seconds; 0 when admitted
    now: float  # the store's time of the decision (Unix seconds)
    day: int  # the UTC day the tokens were reserved on
    requests: Quota | None = None
    tokens: Quota | None = None
    reason: str = ""  # the limit that refused, by its YAML key


def _refill(counters: Counters, capacity: int, now: float) -> float:
    """The minute bucket's level at ``now``."""
    if counters.level is None:
        return float(capacity)
    elapsed = max(now - counters.updated, 0.0)
    return min(float(capacity), counters.level + elapsed * capacity / MINUTE)


def gcra_interval(rpm: int) -> int:
    """GCRA's emission interval for ``rpm`` requests a minute, in whole microseconds (rounded down,
    so N of them never exceed a minute; the burst tolerance is N intervals)."""
    return max(1, 60 * MICROS // rpm)


def decide(counters: Counters, limits: Limits, ask: Ask, now: float) -> Verdict:
    """Admit ``ask`` or not at ``now``; an admission updates ``counters`` (every dimension at once),
    a refusal leaves them as they were."""
    waits: list[tuple[float, str]] = []
    day = int(now // DAY)
    rpm = limits.requests_per_minute
    tat = counters.tat
    if rpm is not None:
        interval = gcra_interval(rpm)
        now_us = round(now * MICROS)
        tat = max(counters.tat, now_us) + interval
        early = tat - rpm * interval - now_us  # > 0: this request comes before GCRA allows it
        if early > 0:
            waits.append((early / MICROS, "requests_per_minute"))
    tpm = limits.tokens_per_minute
    level = 0.0
    if tpm is not None:
        level = _refill(counters, tpm, now)
        if ask.tokens > level + TOKEN_SLACK and level < tpm - TOKEN_SLACK:
            waits.append(((min(ask.tokens, tpm) - level) * MINUTE / tpm, "tokens_per_minute"))
    tpd = limits.tokens_per_day
    used = counters.used if counters.day == day else 0.0
    if tpd is not None and used + ask.tokens > tpd + TOKEN_SLACK and used > 0:
        waits.append(((day + 1) * DAY - now, "tokens_per_day"))
    live = counters.leases
    if live and min(live.values()) <= now:  # some expired: a process died holding them
        live = {lease: expiry for lease, expiry in live.items() if expiry > now}
    if limits.concurrent is not None and ask.lease is not None and len(live) >= limits.concurrent:
        waits.append((CONCURRENT_RETRY, "concurrent"))
    admitted = not waits
    if admitted:
        if rpm is not None:
            counters.tat = tat
        if tpm is not None:
            level -= ask.tokens
            counters.level, counters.updated = level, now
        if tpd is not None:
            used += ask.tokens
            counters.day, counters.used = day, used
        if ask.lease is not None:
            live[ask.lease] = now + LEASE_SECONDS
    counters.leases = live
    wait, reason = max(waits) if waits else (0.0, "")
    return verdict(limits, admitted, wait, reason, now, counters.tat, level, used)


def verdict(limits: Limits, admitted: bool, wait: float, reason: str, now: float, tat: int, level: float,
            used: float) -> Verdict:
    """The Verdict of a decision, from the counters as it left them (``tat``, the minute bucket's
    ``level``, the day's ``used``); the Redis script's answer goes through here too."""
    requests = tokens = None
    day = int(now // DAY)
    rpm, tpm, tpd = limits.requests_per_minute, limits.tokens_per_minute, limits.tokens_per_day
    if rpm is not None:
        interval, now_us = gcra_interval(rpm), round(now * MICROS)
        remaining = (now_us + rpm * interval - max(tat, now_us)) // interval
        requests = Quota(rpm, max(0, min(rpm, remaining)), max(tat - now_us, 0) / MICROS)
    if tpm is not None:
        tokens = Quota(tpm, max(0, math.floor(level)), max((tpm - level) * MINUTE / tpm, 0.0))
    elif tpd is not None:
        tokens = Quota(tpd, max(0, math.floor(tpd - used)), (day + 1) * DAY - now)
    return Verdict(admitted, 0.0 if admitted else wait, now, day, requests, tokens, reason)


def settle(counters: Counters, limits: Limits, reserved: int, used: int | None, day: int, lease: str | None,
           now: float) -> None:
    """A request has ended: its reservation corrected to what it used (``used`` None: unknown,
    the reservation stands), its lease released."""
    if used is not None and reserved != used:
        refund = reserved - used
        tpm = limits.tokens_per_minute
        if tpm is not None:
            counters.level = min(float(tpm), _refill(counters, tpm, now) + refund)
            counters.updated = now
        if limits.tokens_per_day is not None and counters.day == day:
            counters.used = max(counters.used - refund, 0.0)
    if lease is not None:
        counters.leases.pop(lease, None)


def renew(counters: Counters, leases: Sequence[str], now: float) -> None:
    """The leases a live process still holds last another LEASE_SECONDS."""
    for lease in leases:
        if lease in counters.leases:
            counters.leases[lease] = now + LEASE_SECONDS


@dataclass(frozen=True, slots=True)
class Standing:
    """A principal's counters as ``keys`` shows them: what is left of each limit now."""

    requests: Quota | None
    tokens_per_minute: Quota | None
    tokens_today: float  # used on the current UTC day
    leases: int  # requests in flight (live leases)


def standing(counters: Counters, limits: Limits, now: float) -> Standing:
    """What ``counters`` leave of ``limits`` at ``now``; changes nothing."""
    day = int(now // DAY)
    used = counters.used if counters.day == day else 0.0
    tpm = limits.tokens_per_minute
    level = _refill(counters, tpm, now) if tpm is not None else 0.0
    quotas = verdict(Limits(limits.requests_per_minute, tpm), True, 0.0, "", now, counters.tat, level, used)
    return Standing(quotas.requests, quotas.tokens, used, sum(1 for expiry in counters.leases.values() if expiry > now))


# --- the reservation ------------------------------------------------------------------------------

_CAPS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def estimate(body: Mapping[str, Any]) -> int:
    """The input estimate (DESIGN §13): the characters of the request's text content / 4, rounded
    up — message contents and text parts, a completion's prompt, an embedding's input strings."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                chars += _text_chars(message.get("content"))
    for key in ("prompt", "input"):
        chars += _text_chars(body.get(key))
    return -(-chars // 4)


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def reservation(body: Mapping[str, Any], route_cap: int | None, default: int, *, output: bool = True) -> int:
    """Tokens a request reserves: its own output cap (``max_tokens``, ``max_completion_tokens``,
    ``max_output_tokens``), else its route's ``max_output_tokens``, else ``default``; plus the input
    estimate. ``output=False`` (embeddings) reserves the input alone."""
    cap = 0
    if output:
        given = next((v for key in _CAPS if isinstance(v := body.get(key), int) and not isinstance(v, bool)
                      and v >= 0), None)
        cap = given if given is not None else route_cap if route_cap is not None else default
    return estimate(body) + cap


# --- the headers clients read ---------------------------------------------------------------------


def duration(seconds: float) -> str:
    """OpenAI's reset format: ``2s``, ``1m30s``, ``1h2m3s``, rounded up to a whole second (``0s``
    for nothing to wait)."""
    whole = max(0, math.ceil(seconds - EPSILON))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return out + (f"{secs}s" if secs or not out else "")


def openai_headers(verdict: Verdict) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, as OpenAI sends them."""
    headers: dict[str, str] = {}
    for (limit, remaining, reset), quota in zip(_OPENAI_NAMES, (verdict.requests, verdict.tokens), strict=True):
        if quota is not None:
            headers[limit] = str(quota.limit)
            headers[remaining] = str(quota.remaining)
            headers[reset] = duration(quota.reset)
    return headers


_OPENAI_NAMES: Final = tuple((f"x-ratelimit-limit-{name}", f"x-ratelimit-remaining-{name}", f"x-ratelimit-reset-{name}")
                             for name in ("requests", "tokens"))


def anthropic_headers(verdict: Verdict) -> dict[str, str]:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``, the reset as an RFC 3339
    time, as Anthropic sends them."""
    headers: dict[str, str] = {}
    for name, quota in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if quota is not None:
            at = datetime.datetime.fromtimestamp(math.ceil(verdict.now + quota.reset - EPSILON), datetime.UTC)
            headers[f"anthropic-ratelimit-{name}-limit"] = str(quota.limit)
            headers[f"anthropic-ratelimit-{name}-remaining"] = str(quota.remaining)
            headers[f"anthropic-ratelimit-{name}-reset"] = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return headers


class RateLimited(GatewayError):
    """429 ``gateway_rate_limited``: the gateway's own limit, never a provider's. Its Retry-After is
    exact however long (a spent day: until midnight UTC); past a minute clients are told not to retry
    on their own (``x-should-retry: false``)."""

    def __init__(self, verdict: Verdict, headers: Mapping[str, str]) -> None:
        wait = max(1, math.ceil(verdict.retry_after - EPSILON))
        super().__init__(429, f"This gateway key is over its {verdict.reason} limit; retry after {wait}s.",
                         type="rate_limit_error", code="gateway_rate_limited", retry_after=wait,
                         should_retry=False if wait > MINUTE else None)
        self.limit_headers = dict(headers)

    def headers(self) -> dict[str, str]:
        headers = dict(self.limit_headers)
        headers["Retry-After"] = str(int(self.retry_after or 1))
        if self.should_retry is False:
            headers["x-should-retry"] = "false"
        return headers


# --- the stores -----------------------------------------------------------------------------------


class LimitStore(Protocol):
    """Where the counters live; each call is atomic for one principal, and StoreError on failure."""

    backend: str

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``decide`` on the principal's counters at the store's time, atomically."""
        ...

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``settle`` on the principal's counters at the store's time, atomically. Once called it
        lands even if its caller is cancelled while it waits (the request's caller left)."""
        ...

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``renew`` the principal's leases this process holds."""
        ...

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """The principal's counters and the store's time, read without a change."""
        ...

    async def close(self) -> None:
        """Release the backend's connections and threads."""
        ...


class MemoryLimits:
    """Counters in this process: what ``fail_mode: open`` counts in while the store is down, and
    the store of the pure tests (with an injected clock). Bounded by the configured principals."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.kept: dict[str, Counters] = {}

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``decide`` on this process's counters."""
        return decide(self.kept.setdefault(principal, Counters()), limits, ask, self.clock())

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``settle`` on this process's counters."""
        settle(self.kept.setdefault(principal, Counters()), limits, reserved, used, day, lease, self.clock())

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``renew`` on this process's counters."""
        counters = self.kept.get(principal)
        if counters is not None:
            renew(counters, leases, self.clock())

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """This process's counters of ``principal``."""
        return self.kept.get(principal, Counters()), self.clock()

    async def close(self) -> None:
        """Nothing to release."""


@dataclass(slots=True)
class Admission:
    """An admitted request's claim on its principal's limits, until ``Limiter.release``."""

    principal: str
    limits: Limits
    verdict: Verdict
    reserved: int
    lease: str | None
    store: LimitStore  # where it was counted: the shared store, or this process's fallback
    settled: bool = False  # released already (once per admission, however the request ends)


class StoreOpener(Protocol):
    """Opens the shared limit store on first need (``state.holder.Opening``) and closes it."""

    async def store(self) -> LimitStore:
        """The open store; StoreError when it cannot be opened."""
        ...

    async def close(self) -> None:
        """Close the store if it was opened."""
        ...


class Limiter:
    """The process's door to the limits: the shared store (opened on first need by ``opener``),
    ``state.fail_mode`` when it fails, and the renewal of the leases this process holds.

    Every failure of a store call is counted by the store's guard (``tensorwall_state_errors_total``)
    and every fallback by ``on_fallback`` (open: counted in this process; closed: 503).
    """

    def __init__(self, opener: StoreOpener, fail_mode: str = "open",
                 on_fallback: Callable[[str], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self._opener = opener
        self.fail_mode = fail_mode
        self._on_fallback = on_fallback
        self.local = MemoryLimits(clock)
        # Leases this process holds, by principal and the store they are counted in: renewed together.
        self._held: dict[tuple[str, int], tuple[LimitStore, Limits, set[str]]] = {}
        self._renewer: asyncio.Task[None] | None = None
        # Lease ids: this process's random prefix and a counter, unique among every process sharing
        # the store without a call to the OS's random source per request.
        self._lease_prefix = secrets.token_hex(6)
        self._leases = itertools.count()

    async def admit(self, principal: Principal, limits: Limits, tokens: int) -> Admission | Verdict:
        """Admit one request of ``principal`` reserving ``tokens``: its Admission, or the refusing
        Verdict. 503 ``state_unavailable`` when the store fails and ``fail_mode`` is closed."""
        ask = Ask(tokens if limits.counts_tokens else 0,
                  f"{self._lease_prefix}{next(self._leases):x}" if limits.concurrent is not None else None)
        who = principal.id
        store: LimitStore
        try:
            store = await self._opener.store()
            verdict = await store.check(who, limits, ask)
        except StoreError as exc:
            self._fell_back(exc)
            store = self.local
            verdict = await store.check(who, limits, ask)
        if not verdict.admitted:
            return verdict
        admission = Admission(who, limits, verdict, ask.tokens, ask.lease, store)
        if ask.lease is not None:
            held = self._held.get((who, id(store)))
            if held is None:
                held = self._held[(who, id(store))] = (store, limits, set())
            held[2].add(ask.lease)
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew_now_and_then(), name="tensorwall-lease-renewal")
        return admission

    async def release(self, admission: Admission, used: int | None) -> None:
        """The request has ended: its tokens corrected to ``used`` (None: unknown, the reservation
        stands) and its lease released, once. A failure is counted and logged; the lease then expires."""
        if admission.settled:
            return
        admission.settled = True
        if admission.lease is not None:
            held = self._held.get((admission.principal, id(admission.store)))
            if held is not None:
                held[2].discard(admission.lease)
                if not held[2]:
                    del self._held[(admission.principal, id(admission.store))]
        if admission.lease is None and (not admission.limits.counts_tokens or used == admission.reserved):
            return  # nothing to correct, nothing to release
        try:
            await admission.store.settle(admission.principal, admission.limits, admission.reserved, used,
                                         admission.verdict.day, admission.lease)
        except StoreError as exc:
            log.debug("%s", exc)  # counted by the store's guard

    async def finish(self, admission: Admission, used: int | None) -> None:
        """``release``, once; the settlement lands in the store even when the request's own task is
        cancelled while it waits (its caller left): every store runs a settlement once called."""
        if not admission.settled:
            await self.release(admission, used)

    async def standing(self, principal: Principal, limits: Limits) -> Standing:
        """What the shared store's counters leave of ``principal``'s limits now (StoreError when it
        cannot say); changes nothing."""
        counters, now = await (await self._opener.store()).counters(principal.id)
        return standing(counters, limits, now)

    def _fell_back(self, exc: StoreError) -> None:
        if self._on_fallback is not None:
            self._on_fallback(self.fail_mode)
        if self.fail_mode == "closed":
            raise GatewayError(503, "The state store that keeps this key's limits is unavailable; retry later.",
                               type="server_error", code="state_unavailable", retry_after=1) from None
        log.debug("limits counted in this process: %s", exc)

    async def _renew_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            for (principal, _), (store, _, leases) in list(self._held.items()):
                with contextlib.suppress(StoreError):
                    await store.renew(principal, sorted(leases))

    async def close(self) -> None:
        """Stop renewing leases, let the releases under way end, and close the store."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        await self._opener.close()
