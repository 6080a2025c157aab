"""The Redis backend of the state store: every instance on every host sees the same values (DESIGN §13).

Through ``redis.asyncio`` with a bounded pool per process (a call waits for a free connection
within its own timeout, never longer). Every key is under ``state.key_prefix`` (default ``tw:``),
so one Redis can serve other applications, or several gateways with prefixes of their own.

An abandoned call is not retried (DESIGN §14): redis-py's retries are off, and a call cancelled
past ``state.timeout_ms`` has its connection closed by redis-py (the answer it may still send must
not be read as the answer to the next command on that connection); the next call takes a new one.

The principals' limit counters (``RedisLimits``) are two keys per principal sharing the hash tag
``{tw:<principal>}`` under the prefix (a hash of the counters, a sorted set of leases by expiry), so
a cluster keeps them on one shard; each check, settlement or renewal is one Lua script, atomic, its
time read from Redis ``TIME`` inside it, so every instance counts on one clock.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..limits import (
    CONCURRENT_RETRY,
    DAY,
    LEASE_SECONDS,
    MINUTE,
    TOKEN_SLACK,
    Ask,
    Counters,
    Verdict,
    verdict,
)
from . import ErrorCounter
from .guard import CallGuard

if TYPE_CHECKING:
    from ..config import Limits, StateConfig

# Connections per process: calls are short, so a few dozen serve thousands of requests a second;
# past it a call waits for one (within its timeout) rather than open more.
POOL_SIZE: Final = 32
SECRET_BYTES: Final = 32
# Keys renewed per pipeline round trip: a stored conversation's chain is at most 256 turns.
TOUCH_CHUNK: Final = 512


def _milliseconds(ttl_seconds: float) -> int:
    if not ttl_seconds > 0:
        raise ValueError(f"a time to live must be positive, got {ttl_seconds!r}")
    return max(1, math.ceil(ttl_seconds * 1000))


class RedisStore:
    """The state store in Redis (see the module's docstring)."""

    backend = "redis"

    def __init__(self, client: Redis, prefix: str, guard: CallGuard) -> None:
        self._client = client
        self._prefix = prefix
        self._guard = guard

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> RedisStore:
        """A pool on ``state.url``, checked with one PING; StoreError when Redis does not answer."""
        guard = CallGuard(cls.backend, config.timeout_seconds, (RedisError, OSError), on_error)
        if config.url is None:
            raise guard.fail("open", "state.url is not set")
        seconds = config.timeout_seconds
        try:
            pool = BlockingConnectionPool.from_url(
                config.url.reveal(), max_connections=POOL_SIZE, timeout=seconds, socket_timeout=seconds,
                socket_connect_timeout=seconds, retry=Retry(NoBackoff(), 0), retry_on_error=[],
                health_check_interval=0)
        except ValueError as exc:  # a URL config.py let through that redis-py reads otherwise
            raise guard.fail("open", f"state.url: {type(exc).__name__}") from None
        store = cls(Redis(connection_pool=pool), config.key_prefix, guard)
        try:
            await guard.run("open", store._client.ping())
        except BaseException:
            await store.close()
            raise
        return store

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None when there is none or it expired."""
        value = await self._guard.run("get", self._client.get(self._prefix + key))
        if value is None or isinstance(value, bytes):
            return value
        return value.encode()  # only with decode_responses, which this client never sets

    async def put(self, key: str, value: bytes, ttl_seconds: float) -> None:
        """SET with PX: the value and its expiry in one command."""
        await self._guard.run("put", self._client.set(self._prefix + key, value, px=_milliseconds(ttl_seconds)))

    async def delete(self, key: str) -> bool:
        """DEL; True when the key existed (Redis never counts an expired key)."""
        removed = await self._guard.run("delete", self._client.delete(self._prefix + key))
        return bool(removed)

    async def touch(self, keys: Sequence[str], ttl_seconds: float) -> None:
        """PEXPIRE for every key in one pipeline (a round trip per TOUCH_CHUNK keys); a key that
        does not exist stays absent."""
        px = _milliseconds(ttl_seconds)
        for start in range(0, len(keys), TOUCH_CHUNK):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[start:start + TOUCH_CHUNK]:
                pipe.pexpire(self._prefix + key, px)
            await self._guard.run("touch", pipe.execute())

    async def secret(self, name: str) -> bytes:
        """SET NX then GET: the first instance to ask makes it, every other one reads the same."""
        key = f"{self._prefix}secret:{name}"
        candidate = secrets.token_bytes(SECRET_BYTES)
        pipe = self._client.pipeline(transaction=False)
        pipe.set(key, candidate, nx=True)
        pipe.get(key)
        _, value = await self._guard.run("secret", pipe.execute())
        if not isinstance(value, bytes) or len(value) != SECRET_BYTES:
            raise self._guard.fail("secret", f"{key} holds something that is not a {SECRET_BYTES}-byte secret")
        return value

    async def close(self) -> None:
        """Close the pool's connections; every call after this fails."""
        self._guard.closed = True
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


# limits.decide, in Lua: the same arithmetic over the same fields (t: GCRA's theoretical arrival
# time in microseconds, as limits.gcra_interval counts it, l/u: the minute bucket's level and when it was brought up to date, d/s: the UTC day and the
# tokens used on it; the lease set scored by expiry). Numbers cross as '%.17g' strings, so no
# rounding makes a request at the limit look early. ARGV: rpm, tpm, tpd, concurrent (0: not
# limited), tokens, lease ('' for none), and the constants.
_COMMON_LUA: Final = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = now_us / 1000000
local function f(x) return string.format('%.17g', x) end
local MINUTE, DAY = tonumber(ARGV[#ARGV - 2]), tonumber(ARGV[#ARGV - 1])
local EPS = tonumber(ARGV[#ARGV])
local function refill(tpm, h)
  local level, updated = tonumber(h[1]), tonumber(h[2]) or 0
  if level == nil then return tpm end
  return math.min(tpm, level + math.max(now - updated, 0) * tpm / MINUTE)
end
"""

_CHECK_LUA: Final = _COMMON_LUA + """
local rpm, tpm, tpd, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, lease = tonumber(ARGV[5]), ARGV[6]
local LEASE, RETRY = tonumber(ARGV[7]), tonumber(ARGV[8])
local h = redis.call('HMGET', KEYS[1], 't', 'l', 'u', 'd', 's')
local tat0 = tonumber(h[1]) or 0
local day = math.floor(now / DAY)
local wait, reason = 0, ''
local function refuse(w, r) if w > wait then wait, reason = w, r end end
local tat = tat0
if rpm > 0 then
  local interval = math.max(1, math.floor(60000000 / rpm))
  tat = math.max(tat0, now_us) + interval
  local early = tat - rpm * interval - now_us
  if early > 0 then refuse(early / 1000000, 'requests_per_minute') end
end
local level = 0
if tpm > 0 then
  level = refill(tpm, {h[2], h[3]})
  if tokens > level + EPS and level < tpm - EPS then
    refuse((math.min(tokens, tpm) - level) * MINUTE / tpm, 'tokens_per_minute')
  end
end
local used = 0
if tonumber(h[4]) == day then used = tonumber(h[5]) or 0 end
if tpd > 0 and used + tokens > tpd + EPS and used > 0 then refuse((day + 1) * DAY - now, 'tokens_per_day') end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', f(now))
  if lease ~= '' and redis.call('ZCARD', KEYS[2]) >= conc then refuse(RETRY, 'concurrent') end
end
local admitted = reason == ''
if admitted then
  local fields = {}
  if rpm > 0 then fields[#fields + 1] = 't'; fields[#fields + 1] = f(tat) else tat = tat0 end
  if tpm > 0 then
    level = level - tokens
    fields[#fields + 1] = 'l'; fields[#fields + 1] = f(level); fields[#fields + 1] = 'u'; fields[#fields + 1] = f(now)
  end
  if tpd > 0 then
    used = used + tokens
    fields[#fields + 1] = 'd'; fields[#fields + 1] = f(day); fields[#fields + 1] = 's'; fields[#fields + 1] = f(used)
  end
  if #fields > 0 then
    redis.call('HSET', KEYS[1], unpack(fields))
    redis.call('PEXPIRE', KEYS[1], 2 * DAY * 1000)
  end
  if lease ~= '' then
    redis.call('ZADD', KEYS[2], f(now + LEASE), lease)
    redis.call('PEXPIRE', KEYS[2], math.ceil(LEASE * 1000))
  end
else
  tat = tat0
end
return {admitted and '1' or '0', f(wait), reason, f(now), f(tat), f(level), f(used)}
"""

# limits.settle: ARGV: tpm, tpd (0: not limited), reserved, used ('' unknown), day, lease ('' none).
_SETTLE_LUA: Final = _COMMON_LUA + """
local tpm, tpd, reserved, used = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local day, lease = tonumber(ARGV[5]), ARGV[6]
if used ~= nil and used ~= reserved then
  local refund = reserved - used
  if tpm > 0 then
    local level = math.min(tpm, refill(tpm, redis.call('HMGET', KEYS[1], 'l', 'u')) + refund)
    redis.call('HSET', KEYS[1], 'l', f(level), 'u', f(now))
  end
  if tpd > 0 and tonumber(redis.call('HGET', KEYS[1], 'd')) == day then
    local spent = tonumber(redis.call('HGET', KEYS[1], 's')) or 0
    redis.call('HSET', KEYS[1], 's', f(math.max(spent - refund, 0)))
  end
end
if lease ~= '' then redis.call('ZREM', KEYS[2], lease) end
return 1
"""

# limits.renew: ARGV: the lease seconds, then the lease ids; only leases still held are renewed.
_RENEW_LUA: Final = _COMMON_LUA + """
local LEASE = tonumber(ARGV[1])
for i = 2, #ARGV - 3 do redis.call('ZADD', KEYS[2], 'XX', f(now + LEASE), ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], math.ceil(LEASE * 1000))
return 1
"""

# The counters as they are, read on Redis's clock: the hash's fields, the live leases, the time.
_READ_LUA: Final = _COMMON_LUA + """
local h = redis.call('HMGET', KEYS[1], 't', 'l', 'u', 'd', 's')
local leases = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. f(now), '+inf', 'WITHSCORES')
return {h[1] or '', h[2] or '', h[3] or '', h[4] or '', h[5] or '', f(now), leases}
"""

# Appended to every script's ARGV: the constants the Lua shares with limits.py.
_CONSTANTS: Final = (MINUTE, DAY, TOKEN_SLACK)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisLimits:
    """The limit counters in Redis (see the module's docstring)."""

    backend = "redis"

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._prefix = store._prefix
        self._guard = store._guard
        client = store._client
        self._check = client.register_script(_CHECK_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._renew = client.register_script(_RENEW_LUA)
        self._read = client.register_script(_READ_LUA)

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> RedisLimits:
        """A pool of its own on ``state.url``, checked with one PING; StoreError when Redis does not answer."""
        return cls(await RedisStore.open(config, on_error))

    def _keys(self, principal: str) -> list[str]:
        tagged = f"{self._prefix}{{tw:{principal}}}"
        return [tagged, tagged + ":leases"]

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``limits.decide`` in one script: one round trip, atomic."""
        args = (limits.requests_per_minute or 0, limits.tokens_per_minute or 0, limits.tokens_per_day or 0,
                limits.concurrent or 0, ask.tokens, ask.lease or "", LEASE_SECONDS, CONCURRENT_RETRY, *_CONSTANTS)
        answer = await self._guard.run("limit_check", self._check(keys=self._keys(principal), args=args))
        admitted, wait, reason, now, tat, level, used = (_text(v) for v in answer)
        return verdict(limits, admitted == "1", float(wait), reason, float(now), int(float(tat)), float(level),
                       float(used))

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``limits.settle`` in one script."""
        args = (limits.tokens_per_minute or 0, limits.tokens_per_day or 0, reserved, "" if used is None else used,
                day, lease or "", *_CONSTANTS)
        await self._guard.run("limit_settle", self._settle(keys=self._keys(principal), args=args))

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``limits.renew`` in one script."""
        args: tuple[str | float, ...] = (LEASE_SECONDS, *leases, *_CONSTANTS)
        await self._guard.run("limit_renew", self._renew(keys=self._keys(principal), args=args))

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """The principal's counters as they are, and Redis's time, in one script."""
        answer = await self._guard.run("limit_read", self._read(keys=self._keys(principal), args=_CONSTANTS))
        tat, level, updated, day, used, now = (_text(v) for v in answer[:6])
        pairs = [_text(v) for v in answer[6]]
        return Counters(int(float(tat or 0)), float(level) if level else None, float(updated or 0),
                        int(float(day or 0)), float(used or 0),
                        {pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)}), float(now)

    async def close(self) -> None:
        """Close the pool's connections; every call after this fails."""
        await self._store.close()
