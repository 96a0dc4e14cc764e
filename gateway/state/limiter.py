"""The rate limiter behind the policy's ``rate_limit`` condition: in this process, or on Redis.

One process keeps the exact one-minute log in ``CallCounters``. Replicas behind a load
balancer share one log per principal+tool in Redis: a sorted set of the accepted calls,
trimmed, counted and appended in one Lua script (atomic on the server, timed by the
server's clock), so N replicas together admit exactly ``limit`` calls in any 60 s window.
The recent-call counts of the policy input (``calls_last_minute``, ``calls_last_hour``,
``tool_calls_last_minute``) are shared the same way: bucketed hashes (1 s buckets for the
minute, 1 min for the hour; conservative at the bucket's resolution like ``CallCounters``),
read in one script before the decision and bumped by the admission script, so a policy cap
such as ``max_calls_per_hour`` holds across the replicas too.
A Redis that cannot be reached is ``StateUnavailable``: the call is refused (fail closed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.policy.counters import CallCounters, RecentCounts
from gateway.state.health import Probe, safe_url

WINDOW_MS = 60_000
PREFIX = "symbi:rl:"
COUNTS = "symbi:cnt:"

# KEYS: the limit log, then the principal's second and minute buckets and the tool's second
# buckets; ARGV: limit ("" for none), window (ms), a unique member. Scores are the server's
# microseconds, so every replica reads one clock; a score <= now - window has left the window.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[1] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) * 1000)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local s = tonumber(t[1])
local m = math.floor(s / 60)
local function bump(key, bucket, horizon, ttl)
  redis.call('HINCRBY', key, bucket, 1)
  redis.call('EXPIRE', key, ttl)
  if redis.call('HLEN', key) > 80 then
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if tonumber(f) <= horizon then redis.call('HDEL', key, f) end
    end
  end
end
bump(KEYS[2], s, s - 61, 62)
bump(KEYS[3], m, m - 61, 3720)
bump(KEYS[4], s, s - 61, 62)
return 1
"""

# KEYS: the principal's second and minute buckets, the tool's second buckets -> the three
# counts over the last 61 buckets of each (never below the exact count)
_COUNTS = """
local s = tonumber(redis.call('TIME')[1])
local function sum(key, lo)
  local n = 0
  local kv = redis.call('HGETALL', key)
  for i = 1, #kv, 2 do
    if tonumber(kv[i]) > lo then n = n + tonumber(kv[i + 1]) end
  end
  return n
end
return {sum(KEYS[1], s - 61), sum(KEYS[2], math.floor(s / 60) - 61), sum(KEYS[3], s - 61)}
"""


class RateLimiter(Protocol):
    async def counts(self, principal: str, tool: str) -> RecentCounts:
        """The recent-call counts for the policy input of a call of ``tool`` by ``principal``."""
        ...

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        """Record one call unless ``limit`` calls per minute were already admitted (None: no limit)."""
        ...


class LocalRateLimiter:
    """One process: the exact log in ``CallCounters`` (also the policy input's counts)."""

    def __init__(self, counters: CallCounters) -> None:
        self.counters = counters

    async def counts(self, principal: str, tool: str) -> RecentCounts:
        return self.counters

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


@functools.lru_cache(maxsize=4096)  # bounded; every call needs them twice (counts, acquire)
def _keys_of(principal: str, tool: str) -> tuple[str, str, str, str]:
    """The Redis keys of ``principal`` calling ``tool``: its limit log, then its counts' buckets."""
    p, pt = _key(principal), _key(principal, tool)
    return f"{PREFIX}{pt}", f"{COUNTS}{p}:s", f"{COUNTS}{p}:m", f"{COUNTS}{pt}:s"


class RedisRateLimiter:
    """Replicas: the log lives in Redis; ``counters`` still feeds this replica's policy input."""

    def __init__(self, url: str, counters: CallCounters, *, timeout_s: float) -> None:
        self.url = url
        self.counters = counters
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._acquire = self._r.register_script(_ACQUIRE)
        self._counts = self._r.register_script(_COUNTS)
        self.probe = Probe("redis", f"rate limits and call counts (Redis at {safe_url(url)})", self.ping)

    @staticmethod
    def _keys(principal: str, tool: str) -> list[str]:
        return list(_keys_of(principal, tool))

    def _unavailable(self, e: BaseException, what: str) -> StateUnavailable:
        self.probe.failed(e)
        return StateUnavailable(
            f"{self.probe.what} cannot be reached: the call is refused until it answers",
            reasons=[
                f"{self.probe.what} cannot be reached ({type(e).__name__}); {what} cannot be "
                "checked, so the call is refused"
            ],
        )

    async def counts(self, principal: str, tool: str) -> RecentCounts:
        try:
            got = await self._counts(keys=self._keys(principal, tool)[1:])
        except (RedisError, OSError) as e:
            raise self._unavailable(e, "the recent-call counts") from e
        self.probe.ok()
        minute, hour, tool_minute = (int(x) for x in got)
        return SharedCounts(principal, tool, minute, hour, tool_minute)

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        args = ["" if limit is None else limit, WINDOW_MS, uuid.uuid4().hex]
        try:
            admitted = await self._acquire(keys=self._keys(principal, tool), args=args)
        except (RedisError, OSError) as e:
            raise self._unavailable(e, "the rate limit") from e
        self.probe.ok()
        if not admitted:
            return False
        self.counters.try_acquire(principal, tool, None)  # this replica's own view (/api/state footprint)
        return True

    async def ping(self) -> None:
        await self._r.ping()

    async def aclose(self) -> None:
        await self._r.aclose()
