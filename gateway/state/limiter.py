"""The rate limiter behind the policy's ``rate_limit`` condition: in this process, or on Redis.

One process keeps the exact one-minute log in ``CallCounters``. Replicas behind a load
balancer share one log per principal+tool in Redis: a sorted set of the accepted calls,
trimmed, counted and appended in one Lua script (atomic on the server, timed by the
server's clock), so N replicas together admit exactly ``limit`` calls in any 60 s window.
A Redis that cannot be reached is ``StateUnavailable``: the call is refused (fail closed).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.policy.counters import CallCounters
from gateway.state.health import Probe, safe_url

WINDOW_MS = 60_000
PREFIX = "symbi:rl:"

# KEYS[1] the log; ARGV: limit, window (ms), a unique member. Scores are the server's
# microseconds, so every replica reads one clock; a score <= now - window has left the window.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) * 1000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RateLimiter(Protocol):
    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        """Record one call unless ``limit`` calls per minute were already admitted (None: no limit)."""
        ...


class LocalRateLimiter:
    """One process: the exact log in ``CallCounters`` (also the policy input's counts)."""

    def __init__(self, counters: CallCounters) -> None:
        self.counters = counters

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        return self.counters.try_acquire(principal, tool, limit)


class RedisRateLimiter:
    """Replicas: the log lives in Redis; ``counters`` still feeds this replica's policy input."""

    def __init__(self, url: str, counters: CallCounters, *, timeout_s: float) -> None:
        self.url = url
        self.counters = counters
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._script = self._r.register_script(_ACQUIRE)
        self.probe = Probe("redis", f"rate limits (Redis at {safe_url(url)})", self.ping)

    async def acquire(self, principal: str, tool: str, limit: int | None) -> bool:
        if limit is not None:
            key = PREFIX + hashlib.sha256(json.dumps([principal, tool]).encode()).hexdigest()[:40]
            try:
                admitted = await self._script(keys=[key], args=[limit, WINDOW_MS, uuid.uuid4().hex])
            except (RedisError, OSError) as e:
                self.probe.failed(e)
                raise StateUnavailable(
                    f"{self.probe.what} cannot be reached: the call is refused until it answers",
                    reasons=[f"{self.probe.what} cannot be reached ({type(e).__name__}); the rate limit "
                             "cannot be checked, so the call is refused"],
                ) from e
            self.probe.ok()
            if not admitted:
                return False
        self.counters.try_acquire(principal, tool, None)  # this replica's counts for the policy input
        return True

    async def ping(self) -> None:
        await self._r.ping()

    async def aclose(self) -> None:
        await self._r.aclose()
