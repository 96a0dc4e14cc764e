"""Topic subscriptions on Redis (``RedisBackend`` and ``RedisCounts`` use them), laid out so
that nothing reads every agent's subscriptions but a publication's fan-out:

* ``subs:exp`` (sorted set ``agent\\0pattern`` scored by its expiry, ms): the live ones are
  those scored past now (a publication's subscribers, the stats); the expiry sweep takes the
  others from its low end, ``SWEEP_BATCH`` at most per script.
* ``subs:of:<agent>`` (sorted set ``pattern`` scored by its expiry): the agent's own, so its
  cap counts only its live ones (``ZCOUNT``) and a park or a departure reads only its keys.
* ``subs:made:<agent>`` (hash ``pattern`` -> when it was made or last renewed, ms): a park
  removes only what was made at or before the park, never what the agent, back on another
  gateway process sharing the Redis, subscribed since.

Every script changes the three together. The layout before (``subs`` hash, ``subs:n``
counts) is dropped when a backend starts: what it held counts as expired, the agents
subscribe again (the policy asked again).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

SWEEP_BATCH = 500  # expired subscriptions one sweep script removes at most
PARK_BATCH = 100  # parked agents one script clears at most (the start's left-behind agents)

# an agent's subscriptions made at or before ``before`` (nil: all of them)
_DROP = """
local function drop(exp, of, made, agent, before)
  for _, p in ipairs(redis.call('ZRANGE', of, 0, -1)) do
    if before == nil or (tonumber(redis.call('HGET', made, p)) or 0) <= before then
      redis.call('ZREM', of, p)
      redis.call('HDEL', made, p)
      redis.call('ZREM', exp, agent .. '\\0' .. p)
    end
  end
end
"""

# KEYS: subs:exp, subs:of:<agent>, subs:made:<agent>; ARGV: agent, pattern, cap (-1: none),
# expiry ms, now ms -> -1 subscribed (or held and live: renewed), else how many live ones it
# holds (one expired, swept or not, is no longer held: it neither counts nor is renewed free)
SUBSCRIBE = """
local live = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not (live and tonumber(live) > tonumber(ARGV[5])) and tonumber(ARGV[3]) >= 0 then
  local n = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[5], '+inf')
  if n >= tonumber(ARGV[3]) then return n end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1] .. '\\0' .. ARGV[2])
return -1
"""

# KEYS: subs:exp, subs:of:<agent>, subs:made:<agent>; ARGV: agent, pattern -> 1 removed, 0 none
_UNSUBSCRIBE = """
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1] .. '\\0' .. ARGV[2])
return 1
"""

# parked agents: KEYS: subs:exp, then subs:of:<agent>, subs:made:<agent> for each;
# ARGV: agent, parked at ms, for each
_PARK = (
    _DROP
    + """
for i = 1, #ARGV, 2 do
  drop(KEYS[1], KEYS[i + 1], KEYS[i + 2], ARGV[i], tonumber(ARGV[i + 1]))
end
return 1
"""
)

# an agent that ended: all of them (LEAVE_SUBS is prepended to ``RedisBackend``'s departure)
LEAVE_SUBS = (
    _DROP
    + """
local function leave_subs(exp, of, made, agent)
  drop(exp, of, made, agent, nil)
  redis.call('DEL', of, made)
end
"""
)

# the expiry sweep, one batch: KEYS: subs:exp; ARGV: now ms, batch, key prefix -> how many went.
# (The agents' own keys are named by what ``subs:exp`` holds: a single Redis, not a cluster.)
_SWEEP = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(gone) do
  local at = string.find(m, '\\0', 1, true)
  local agent, p = string.sub(m, 1, at - 1), string.sub(m, at + 1)
  redis.call('ZREM', ARGV[3] .. 'subs:of:' .. agent, p)
  redis.call('HDEL', ARGV[3] .. 'subs:made:' .. agent, p)
  redis.call('ZREM', KEYS[1], m)
end
return #gone
"""


def parse_live(members: Iterable[bytes]) -> dict[str, set[str]]:
    """``subs:exp`` members (``agent\\0pattern``, read live) -> agent -> patterns."""
    out: dict[str, set[str]] = {}
    for m in members:
        agent, _, pattern = m.decode().partition("\0")
        out.setdefault(agent, set()).add(pattern)
    return out


class RedisSubscriptions:
    """The scripts above, on the backend's connection; ``run`` maps Redis's errors."""

    def __init__(self, r: aioredis.Redis, prefix: str, run: Callable[[Any], Awaitable[Any]]) -> None:
        self.prefix = prefix
        self.exp = prefix + "subs:exp"
        self._r = r
        self._run = run
        self._subscribe = r.register_script(SUBSCRIBE)
        self._unsubscribe = r.register_script(_UNSUBSCRIBE)
        self._park = r.register_script(_PARK)
        self._sweep = r.register_script(_SWEEP)

    def keys(self, agent: str) -> list[str]:
        """subs:exp, subs:of:<agent>, subs:made:<agent>"""
        return [self.exp, f"{self.prefix}subs:of:{agent}", f"{self.prefix}subs:made:{agent}"]

    async def drop_old_layout(self) -> None:
        """The layout before this one (``subs``, ``subs:n``): expired, agents subscribe again."""
        await self._run(self._r.unlink(self.prefix + "subs", self.prefix + "subs:n"))

    async def subscribe(self, agent: str, pattern: str, until_ms: int, made_ms: int, cap: int) -> int:
        """-1 subscribed (renewed), else the live ones it holds (``cap`` reached; -1: no cap)."""
        args: list[str | int] = [agent, pattern, cap, until_ms, made_ms]
        return int(await self._run(self._subscribe(keys=self.keys(agent), args=args)))

    async def unsubscribe(self, agent: str, pattern: str) -> bool:
        return bool(await self._run(self._unsubscribe(keys=self.keys(agent), args=[agent, pattern])))

    async def unsubscribe_parked(self, parked: list[tuple[str, int]]) -> None:
        for i in range(0, len(parked), PARK_BATCH):
            keys, args = [self.exp], list[str]()
            for agent, at_ms in parked[i : i + PARK_BATCH]:
                keys += self.keys(agent)[1:]
                args += [agent, str(at_ms)]
            await self._run(self._park(keys=keys, args=args))

    async def live(self, now_ms: int) -> dict[str, set[str]]:
        return parse_live(await self._run(self._r.zrangebyscore(self.exp, f"({now_ms}", "+inf")))

    async def live_of(self, agent: str, now_ms: int) -> set[str]:
        got = await self._run(self._r.zrangebyscore(self.keys(agent)[1], f"({now_ms}", "+inf"))
        return {p.decode() for p in got}

    async def sweep(self, now_ms: int) -> int:
        """The expired ones go, ``SWEEP_BATCH`` per script (Redis serves others between)."""
        gone = 0
        while True:
            n = int(await self._run(self._sweep(keys=[self.exp], args=[now_ms, SWEEP_BATCH, self.prefix])))
            gone += n
            if n < SWEEP_BATCH:
                return gone
