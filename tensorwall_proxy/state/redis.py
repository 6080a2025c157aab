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
time read from Redis ``TIME`` inside it, so every instance counts on one clock. A process sends its
scripts in batches (``ScriptBatches``): the calls made while one batch is on the wire go out
together in the next, one write on one connection, so under load a check costs a share of a
round trip rather than one round trip and one pooled connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

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
# Packed leads of script calls kept (a few per principal and script).
MAX_LEADS: Final = 4096
# Limit scripts per batch: Redis runs a batch's scripts one after another (some 20 µs each), so a
# batch stays well inside the timeout; what is queued beyond it goes in the next.
BATCH: Final = 128


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


def _with_constants(script: str) -> str:
    """The constants the Lua shares with limits.py, written into a script (not sent with every call)."""
    for name, value in (("MINUTE", MINUTE), ("DAY", DAY), ("EPS", TOKEN_SLACK), ("LEASE", LEASE_SECONDS),
                        ("RETRY", CONCURRENT_RETRY)):
        script = script.replace(f"@{name}@", repr(float(value)))
    return script


# limits.decide, in Lua: the same arithmetic over the same fields (t: GCRA's theoretical arrival
# time in microseconds, as limits.gcra_interval counts it, l/u: the minute bucket's level and when it was brought up to date, d/s: the UTC day and the
# tokens used on it; the lease set scored by expiry). Numbers cross as '%.17g' strings, so no
# rounding makes a request at the limit look early. ARGV: rpm, tpm, tpd, concurrent (0: not
# limited), tokens, lease ('' for none).
_COMMON_LUA: Final = _with_constants("""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local now = now_us / 1000000
local function f(x) return string.format('%.17g', x) end
local MINUTE, DAY, EPS = @MINUTE@, @DAY@, @EPS@
local LEASE, RETRY = @LEASE@, @RETRY@
local function refill(tpm, h)
  local level, updated = tonumber(h[1]), tonumber(h[2]) or 0
  if level == nil then return tpm end
  return math.min(tpm, level + math.max(now - updated, 0) * tpm / MINUTE)
end
""")

_CHECK_LUA: Final = _COMMON_LUA + """
local rpm, tpm, tpd, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, lease = tonumber(ARGV[5]), ARGV[6]
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

# limits.renew: ARGV: the lease ids; only leases still held are renewed.
_RENEW_LUA: Final = _COMMON_LUA + """
for i = 1, #ARGV do redis.call('ZADD', KEYS[2], 'XX', f(now + LEASE), ARGV[i]) end
redis.call('PEXPIRE', KEYS[2], math.ceil(LEASE * 1000))
return 1
"""

# The counters as they are, read on Redis's clock: the hash's fields, the live leases, the time.
_READ_LUA: Final = _COMMON_LUA + """
local h = redis.call('HMGET', KEYS[1], 't', 'l', 'u', 'd', 's')
local leases = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. f(now), '+inf', 'WITHSCORES')
return {h[1] or '', h[2] or '', h[3] or '', h[4] or '', h[5] or '', f(now), leases}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _argument(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else repr(value).encode()


def _bulk(values: Sequence[Any]) -> bytes:
    """``values`` as RESP bulk strings, numbers as Python writes them (which Lua's tonumber reads)."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(v), v) for v in map(_argument, values)])


Packed = tuple[int, bytes]  # arguments in Redis's protocol, and how many


def packed(values: Sequence[Any]) -> Packed:
    """``values`` packed once, to lead the arguments of many calls (``ScriptBatches.call``)."""
    return len(values), _bulk(values)


@dataclass(slots=True)
class _Call:
    """One script call waiting for its batch, its arguments already in Redis's protocol, and the
    future its caller awaits."""

    script: AsyncScript
    count: int  # arguments after the script: numkeys, the keys, ARGV
    packed: bytes  # those arguments as bulk strings
    future: asyncio.Future[Any]
    keep: bool  # sent even when its caller has left (a settlement)

    def command(self, by_sha: bool) -> bytes:
        """EVALSHA (or EVAL with the script's text, which also loads it) with the call's arguments."""
        word, script = (b"EVALSHA", _argument(self.script.sha)) if by_sha else (b"EVAL", _argument(self.script.script))
        return b"*%d\r\n%b%b" % (self.count + 2, _bulk((word, script)), self.packed)


class ScriptBatches:
    """Lua scripts sent in batches: one batch at a time on one connection, carrying every call made
    since the last one left, in the order they were made (so a settlement is always run before a
    later check of the same process). A caller that gives up (its timeout) leaves its call behind:
    not yet sent, it is dropped; sent, its answer is read in its place and thrown away, so no answer
    is ever read as another's. A batch itself is bounded by the timeout: past it (or on any failure
    of the connection) the connection is closed and the batch's calls fail, none retried."""

    def __init__(self, client: Redis, guard: CallGuard) -> None:
        self._pool = client.connection_pool
        self._guard = guard
        self._queued: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def call(self, operation: str, script: AsyncScript, lead: Packed, args: Sequence[Any], *,
                   keep: bool = False) -> Any:
        """``script`` run in the next batch on ``lead`` (numkeys, the keys, and the arguments every call
        of a principal shares, packed once) then ``args``; its answer, or StoreError. ``keep``: sent
        even if its caller gives up before its batch leaves."""
        if self._guard.closed:
            raise self._guard.fail(operation, "the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append(_Call(script, lead[0] + len(args), lead[1] + _bulk(args), future, keep))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send(), name="tensorwall-redis-batches")
        return await self._guard.run(operation, future)

    async def _send(self) -> None:
        try:
            while self._queued:
                batch = [call for call in self._queued[:BATCH] if call.keep or not call.future.done()]
                del self._queued[:BATCH]
                if not batch:
                    continue
                try:
                    async with asyncio.timeout(self._guard.timeout_seconds):
                        replies = await self._execute(batch)
                except Exception as exc:  # the store's failure (or a bug): every call of the batch hears it
                    replies = [exc] * len(batch)
                for call, reply in zip(batch, replies, strict=True):
                    if call.future.done():
                        continue
                    if isinstance(reply, BaseException):
                        call.future.set_exception(reply)
                    else:
                        call.future.set_result(reply)
        finally:
            self._sender = None

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """The batch as EVALSHA commands in one write, their answers read in order; a script Redis
        does not know (restarted, flushed) is sent once more in full (EVAL), in a second write."""
        replies = await self._round_trip([call.command(by_sha=True) for call in batch])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            again = await self._round_trip([batch[i].command(by_sha=False) for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _round_trip(self, commands: list[bytes]) -> list[Any]:
        connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await connection.send_packed_command(b"".join(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:  # bounded by the batch's own timeout, not one of redis-py's per read
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:  # the script's own error: the next answer follows it
                    replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)  # its late answers must never be read as another's
            raise
        finally:
            await self._pool.release(connection)
        return replies

    async def close(self) -> None:
        """Let the batch on the wire end; calls still queued fail."""
        if self._sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([self._sender], timeout=self._guard.timeout_seconds)
        for call in self._queued:
            if not call.future.done():
                call.future.set_exception(RedisError("the store is closed"))
        self._queued.clear()


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
        self._batches = ScriptBatches(client, store._guard)
        self._leads: dict[tuple[str, str, tuple[int, ...]], Packed] = {}

    @classmethod
    async def open(cls, config: StateConfig, on_error: ErrorCounter | None = None) -> RedisLimits:
        """A pool of its own on ``state.url``, checked with one PING; StoreError when Redis does not answer."""
        return cls(await RedisStore.open(config, on_error))

    def _lead(self, script: AsyncScript, principal: str, *fixed: int) -> Packed:
        """numkeys, the principal's two keys and the ``fixed`` arguments (what of its limits the script
        takes), packed once."""
        key = (script.sha, principal, fixed)
        lead = self._leads.get(key)
        if lead is None:
            if len(self._leads) >= MAX_LEADS:
                self._leads.clear()  # principals come from the configuration: only reloads grow it
            tagged = f"{self._prefix}{{tw:{principal}}}"
            lead = self._leads[key] = packed((2, tagged, tagged + ":leases", *fixed))
        return lead

    async def check(self, principal: str, limits: Limits, ask: Ask) -> Verdict:
        """``limits.decide`` in one script: one round trip, atomic."""
        lead = self._lead(self._check, principal, limits.requests_per_minute or 0, limits.tokens_per_minute or 0,
                          limits.tokens_per_day or 0, limits.concurrent or 0)
        answer = await self._batches.call("limit_check", self._check, lead, (ask.tokens, ask.lease or ""))
        admitted, wait, reason, now, tat, level, used = (_text(v) for v in answer)
        return verdict(limits, admitted == "1", float(wait), reason, float(now), int(float(tat)), float(level),
                       float(used))

    async def settle(self, principal: str, limits: Limits, reserved: int, used: int | None, day: int,
                     lease: str | None) -> None:
        """``limits.settle`` in one script."""
        lead = self._lead(self._settle, principal, limits.tokens_per_minute or 0, limits.tokens_per_day or 0)
        await self._batches.call("limit_settle", self._settle, lead,
                                 (reserved, "" if used is None else used, day, lease or ""), keep=True)

    async def renew(self, principal: str, leases: Sequence[str]) -> None:
        """``limits.renew`` in one script."""
        await self._batches.call("limit_renew", self._renew, self._lead(self._renew, principal), leases)

    async def counters(self, principal: str) -> tuple[Counters, float]:
        """The principal's counters as they are, and Redis's time, in one script."""
        answer = await self._batches.call("limit_read", self._read, self._lead(self._read, principal), ())
        tat, level, updated, day, used, now = (_text(v) for v in answer[:6])
        pairs = [_text(v) for v in answer[6]]
        return Counters(int(float(tat or 0)), float(level) if level else None, float(updated or 0),
                        int(float(day or 0)), float(used or 0),
                        {pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)}), float(now)

    async def close(self) -> None:
        """Let the batch on the wire end, then close the pool's connections; every call after this fails."""
        self._guard.closed = True
        await self._batches.close()
        await self._store.close()
