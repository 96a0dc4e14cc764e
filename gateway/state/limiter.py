"""The rate limiter behind the policy's ``rate_limit`` condition: in this process, or on Redis.

A call is *reserved* before its decision (``RateLimiter.reserve``: the recent-call counts the
policy input reads) and then *admitted* under the decision's limit (``Reservation.admit``) or
*released* (``Reservation.release``: the policy denied it, the limit refused it, or the
decision failed). One process keeps the counts and the exact one-minute log in
``CallCounters`` (a reservation counts the call in the windows, admitting records it in the
log, a release takes the count back). Replicas behind a load balancer
share one log per principal+tool in Redis: a sorted set of the calls, trimmed, counted and
appended in one Lua script (atomic on the server, timed by the server's clock) that also
reads and bumps the policy input's counts (``calls_last_minute``, ``calls_last_hour``,
``tool_calls_last_minute``: bucketed hashes, 1 s buckets for the minute, 1 min for the hour;
conservative at the bucket's resolution like ``CallCounters``): one round trip a call, shared
by the calls that ask while another batch is on its way (one script reserves them in order). A
call is admitted when fewer than ``limit`` calls were in the log before its own, so N
replicas together admit at most ``limit`` calls in any 60 s window, and exactly ``limit``
when no refused call of the window is still waiting for its release (while one waits, it
counts: a call beside it may be refused, never one too many admitted); a policy cap such as
``max_calls_per_hour`` holds across the replicas too. A refused call is released in a second
script. A Redis that cannot be reached is ``StateUnavailable``: the call is refused (fail
closed); a release that cannot reach it leaves the call counted (conservative).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.policy.counters import CallCounters, RecentCounts
from gateway.state.health import Probe, safe_url
from gateway.state.redisclient import RedisUser, pong

_logger = logging.getLogger("symbi.state")

WINDOW_MS = 60_000
PREFIX = "symbi:rl:"
COUNTS = "symbi:cnt:"
_BATCH = 64  # reservations in one script at most (its keys are four each)

# Shared by both scripts: the counts over the last 61 buckets of a bucketed hash (never below
# the exact count), and one more call in this second's / minute's bucket (old buckets dropped).
_BUCKETS = """
local function sum(key, lo)
  local n = 0
  local kv = redis.call('HGETALL', key)
  for i = 1, #kv, 2 do
    if tonumber(kv[i]) > lo then n = n + tonumber(kv[i + 1]) end
  end
  return n
end
local function bump(key, bucket, horizon, ttl)
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('EXPIRE', key, ttl)
  if redis.call('HLEN', key) > 80 then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if tonumber(f) <= horizon then redis.call('HDEL', key, f) end
    end
  end
end
"""

# KEYS: per call, its limit log, then its principal's second and minute buckets and its tool's
# second buckets (four each); ARGV: the window (ms), then one unique member per call. Reserves
# the calls in order, as that many one-call scripts run back to back would: each call's counts
# (the policy input's, before it), the calls in its limit log's window before it; the call is
# then in the log and the counts. Scores are the server's microseconds, so every replica reads
# one clock; a score <= now - window has left. One string back (a multi-bulk reply costs the
# client a parse per element): "second,minute" then ";minute,hour,tool_minute,before" per call.
_RESERVE = (
    _BUCKETS
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = tonumber(t[1])
local m = math.floor(s / 60)
local window = tonumber(ARGV[1])
local sums = {}  -- a key's count so far in this script: the calls before bumped it
local function counted(key, lo)
  local n = sums[key]
  if n == nil then n = sum(key, lo) end
  return n
end
local function add(key, bucket, lo, ttl)
  sums[key] = counted(key, lo) + 1
  bump(key, bucket, lo, ttl)
end
local out = {s .. ',' .. m}
for i = 2, #ARGV do
  local k = (i - 2) * 4
  local log, ps, pm, ts = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local c1, c2, c3 = counted(ps, s - 61), counted(pm, m - 61), counted(ts, s - 61)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window * 1000)
  local before = redis.call('ZCARD', log)
  redis.call('ZADD', log, now, ARGV[i])
  redis.call('PEXPIRE', log, window)
  add(ps, s, s - 61, 62)
  add(pm, m, m - 61, 3720)
  add(ts, s, s - 61, 62)
  out[#out + 1] = c1 .. ',' .. c2 .. ',' .. c3 .. ',' .. before
end
return table.concat(out, ';')
"""
)

# KEYS: one call's four, as in _RESERVE; ARGV: its member, second and minute. Takes a reserved call back out
# of the log and the counts: once (the member is removed only once), and never below zero.
_RELEASE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local function drop(key, bucket)
  local n = tonumber(redis.call('HGET', key, bucket) or '0')
  if n > 0 then redis.call('HINCRBY', key, bucket, -1) end
end
drop(KEYS[2], ARGV[2])
drop(KEYS[3], ARGV[3])
drop(KEYS[4], ARGV[2])
return 1
"""


class Reservation(Protocol):
    """One call, counted for its decision; then admitted or released (exactly one of them)."""

    @property
    def counts(self) -> RecentCounts:
        """What the policy input reads (this call not among them)."""
        ...

    def admit(self, limit: int | None) -> bool:
        """Whether the call is under ``limit`` calls per minute (None: no limit); True records it.
        A call not admitted must be released."""
        ...

    async def release(self) -> None:
        """Take the call back (refused or failed before it was admitted); never raises."""
        ...


class RateLimiter(Protocol):
    async def reserve(self, principal: str, tool: str) -> Reservation:
        """A call of ``tool`` by ``principal``, counted for its decision."""
        ...

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        """Record one call unless ``limit`` calls per minute were already admitted (None: no limit)."""
        ...


class _LocalReservation:
    """A call counted in ``CallCounters`` at its reservation; the counts it read are its own
    (the calls reserved before it), so calls whose decisions are awaited together (a remote
    OPA) each read the ones before them: a cap such as ``max_calls_per_hour`` holds for them."""

    __slots__ = ("_buckets", "_counters", "_hour", "_minute", "_open", "_principal", "_tool", "_tool_minute")

    def __init__(self, counters: CallCounters, principal: str, tool: str) -> None:
        self._counters, self._principal, self._tool = counters, principal, tool
        got = counters.reserve(principal, tool)
        self._minute, self._hour, self._tool_minute = got[0], got[1], got[2]
        self._buckets = (got[3], got[4], got[5])
        self._open = True  # neither admitted nor released yet

    @property
    def counts(self) -> _LocalReservation:
        return self  # read as RecentCounts: the counts before this call

    def principal_counts(self, principal: str) -> tuple[int, int]:
        return (self._minute, self._hour) if principal == self._principal else (0, 0)

    def tool_count(self, principal: str, tool: str) -> int:
        return self._tool_minute if (principal, tool) == (self._principal, self._tool) else 0

    def admit(self, limit: int | None) -> bool:
        if not self._open:
            return False
        admitted = self._counters.admit(self._principal, self._tool, limit, self._buckets[2])
        self._open = not admitted  # admitted: counted for good (a release after it keeps it)
        return admitted

    async def release(self) -> None:
        if self._open:
            self._open = False
            self._counters.release(self._principal, self._tool, self._buckets)


class LocalRateLimiter:
    """One process: the exact log in ``CallCounters`` (also the policy input's counts). A
    reservation counts the call in the windows at once; admitting records it in the log."""

    def __init__(self, counters: CallCounters) -> None:
        self.counters = counters

    async def reserve(self, principal: str, tool: str) -> _LocalReservation:
        return _LocalReservation(self.counters, principal, tool)

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        return self.counters.try_acquire(principal, tool, limit)


@dataclass(frozen=True)
class SharedCounts:
    """The counts replicas share, read for one call (principal, tool)."""

    principal: str
    tool: str
    minute: int
    hour: int
    tool_minute: int

    def principal_counts(self, principal: str) -> tuple[int, int]:
        return (self.minute, self.hour) if principal == self.principal else (0, 0)

    def tool_count(self, principal: str, tool: str) -> int:
        return self.tool_minute if (principal, tool) == (self.principal, self.tool) else 0


def _key(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


@functools.lru_cache(maxsize=4096)  # bounded; every call needs them (and a release again)
def _keys_of(principal: str, tool: str) -> tuple[str, str, str, str]:
    """The Redis keys of ``principal`` calling ``tool``: its limit log, then its counts' buckets."""
    p, pt = _key(principal), _key(principal, tool)
    return f"{PREFIX}{pt}", f"{COUNTS}{p}:s", f"{COUNTS}{p}:m", f"{COUNTS}{pt}:s"


class _SharedReservation:
    """As ``_LocalReservation``: counted in Redis at its reservation; admitted, it is counted for
    good (a release after it keeps it, as the local limiter and this replica's own view do: a
    caller cancelled after its admission in a batch left Redis and the local counts apart)."""

    __slots__ = ("counts", "_admitted", "_before", "_keys", "_limiter", "_member", "_second", "_minute")

    def __init__(
        self,
        limiter: RedisRateLimiter,
        who: tuple[str, str],
        keys: tuple[str, ...],
        member: str,
        got: tuple[int, int, int, int, int, int],
    ) -> None:
        minute, hour, tool_minute, self._before, self._second, self._minute = got
        self.counts = SharedCounts(*who, minute, hour, tool_minute)
        self._limiter, self._keys, self._member = limiter, keys, member
        self._admitted = False

    def admit(self, limit: int | None) -> bool:
        if self._admitted or (limit is not None and self._before >= limit):
            return False
        c = self.counts
        self._limiter.counters.try_acquire(c.principal, c.tool, None)  # this replica's own view
        self._admitted = True
        return True

    async def release(self) -> None:
        if self._admitted:
            return  # counted for good, here and in this replica's view
        args: list[str | int] = [self._member, self._second, self._minute]
        try:
            # shielded: a cancelled call is taken back too (its task may be cancelled right now)
            with anyio.CancelScope(shield=True):
                await self._limiter.release_script(keys=self._keys, args=args)
        except (RedisError, OSError) as e:  # counted on: conservative, and the call was refused
            _logger.warning("a refused call stays counted until its window passes: %s", e)


@dataclass(slots=True)
class _Asked:
    """A reservation waiting for its batch."""

    who: tuple[str, str]
    keys: tuple[str, str, str, str]
    member: str
    done: asyncio.Future[_SharedReservation]


class RedisRateLimiter(RedisUser):
    """Replicas: the log lives in Redis; ``counters`` still feeds this replica's policy input.

    The reservations asked while one batch is on its way go together in the next, one script
    for all of them (as group commit does for the audit log): under load a call's round trip
    and its reply's parse are shared; a lone call is sent on the loop's next turn."""

    def __init__(
        self, url: str, counters: CallCounters, *, timeout_s: float, client: aioredis.Redis | None = None
    ) -> None:
        super().__init__(url, timeout_s, client)  # ``client``: the process's one (``build_state``)
        self.url = url
        self.counters = counters
        self._reserve = self._r.register_script(_RESERVE)
        self.release_script = self._r.register_script(_RELEASE)
        self.probe = Probe("redis", "rate limits and call counts (Redis)", self.ping, where=safe_url(url))
        self._asked: list[_Asked] = []
        self._sending: asyncio.Task[None] | None = None  # the batch on its way (one at a time)
        self._scheduled = False  # a send is due on the loop's next turn
        self._releasing: set[asyncio.Task[None]] = set()  # of callers cancelled in a batch
        self._loop: asyncio.AbstractEventLoop | None = None

    def _unavailable(self, e: BaseException, what: str) -> StateUnavailable:
        self.probe.failed(e)
        return StateUnavailable(
            f"{self.probe.what} cannot be reached: the call is refused until it answers",
            reasons=[
                f"{self.probe.what} cannot be reached ({type(e).__name__}); {what} cannot be "
                "checked, so the call is refused"
            ],
        )

    async def reserve(self, principal: str, tool: str) -> _SharedReservation:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a first call, or a new loop (tests): nothing of another loop's
            self._loop, self._asked, self._sending, self._scheduled = loop, [], None, False
        asked = _Asked((principal, tool), _keys_of(principal, tool), uuid.uuid4().hex, loop.create_future())
        self._asked.append(asked)
        if self._sending is None and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send_next, loop)  # after the calls of this turn asked too
        try:
            return await asked.done
        except asyncio.CancelledError:
            done = asked.done  # settled just before its caller was cancelled: nobody releases it
            if done.done() and not done.cancelled() and done.exception() is None:
                self._release_later(done.result())
            raise

    def _send_next(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._asked and self._sending is None:
            batch, self._asked = self._asked[:_BATCH], self._asked[_BATCH:]
            self._sending = loop.create_task(self._send(batch))

    async def _send(self, batch: list[_Asked]) -> None:
        try:
            keys = [k for a in batch for k in a.keys]
            got: bytes = await self._reserve(keys=keys, args=[WINDOW_MS, *(a.member for a in batch)])
            self.probe.ok()
            self._settle(batch, got)
        except (RedisError, OSError) as e:
            self._fail(batch, self._unavailable(e, "the rate limit and the recent-call counts"))
        except BaseException as e:  # cancelled with the loop, or a bug: no caller waits forever
            # the type only (it is said to callers; the error itself is raised on)
            self._fail(batch, StateUnavailable(f"the rate limit could not be checked ({type(e).__name__})"))
            raise
        finally:
            self._sending = None
            if self._asked:
                self._send_next(asyncio.get_running_loop())

    @staticmethod
    def _fail(batch: list[_Asked], error: StateUnavailable) -> None:
        """Refuse the batch's calls (fail closed; a call reserved meanwhile stays counted)."""
        for a in batch:
            if not a.done.done():
                a.done.set_exception(error)

    def _settle(self, batch: list[_Asked], got: bytes) -> None:
        head, *calls = got.split(b";")
        second, minute = (int(x) for x in head.split(b","))
        for a, text in zip(batch, calls, strict=True):
            c = [int(x) for x in text.split(b",")]
            held = _SharedReservation(self, a.who, a.keys, a.member, (c[0], c[1], c[2], c[3], second, minute))
            if a.done.cancelled():  # its caller is gone: take the call back out
                self._release_later(held)
            else:
                a.done.set_result(held)

    def _release_later(self, held: _SharedReservation) -> None:
        task = asyncio.get_running_loop().create_task(held.release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        held = await self.reserve(principal, tool)
        if held.admit(limit):
            return True
        await held.release()
        return False

    async def ping(self) -> None:
        pong(await self._r.ping())  # (an answer that is not PONG: the probe says down)
