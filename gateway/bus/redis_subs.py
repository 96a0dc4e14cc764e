"""Topic subscriptions on Redis (``RedisBackend`` and ``RedisCounts`` use them), laid out so
that nothing reads every agent's subscriptions but a publication's fan-out:

* ``subs:exp`` (sorted set ``agent\\0pattern`` scored by its expiry, ms): the live ones are
  those scored past now (a publication's subscribers, the stats); the expiry sweep takes the
  others from its low end, ``SWEEP_BATCH`` at most per script.
* ``subs:of:<agent>`` (sorted set ``pattern`` scored by its expiry): the agent's own, so its
  cap counts only its live ones (``ZCOUNT``) and a park or a departure reads only its keys.
* ``subs:made:<agent>`` (session 42: when each was made, for a park to compare with) is read
  by nothing: a park runs in one script, so every subscription it sees was made before it.
  A park or a departure deletes one left over.
* ``procs`` (sorted set: gateway process -> until when it is alive, ms, Redis's clock: its
  heartbeat) and ``holds:<process>`` (hash: the agents live on that process -> the hold's
  generation, expiring with its heartbeat): a park (or the start's clean-up) leaves alone an
  agent another live process holds (a stateless client's agent id, live on two replicas
  behind a balancer), and one that came back here since the park began (a newer generation).
  The process keeps its holds in memory too and sends them again when its beat finds the
  key gone (Redis unreachable for longer than ``HOLD_TTL_MS``, restarted without its data).

Every script changes the subscription keys together. The layout before (``subs`` hash,
``subs:n`` counts) is converted once at start (``upgrade``: bounded ``HSCAN`` batches, then the
marker ``layout``); its live subscriptions go on delivering.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis

_logger = logging.getLogger("symbi.bus")

SWEEP_BATCH = 500  # expired subscriptions one sweep script removes at most
PARK_BATCH = 100  # parked agents one script clears at most (the start's left-behind agents)
UPGRADE_BATCH = 500  # old-layout subscriptions one upgrade script converts at most
LAYOUT = "42"  # the marker's value: the old layout was converted
HOLD_TTL_MS = 30_000  # a process that stops beating for this long holds no agent live
BEAT_S = 10.0  # how often a process beats
HOLD_BATCH = 500  # holds sent again per command after a lapse

# Redis's clock, ms (the one clock every process's subscription and park are compared on)
_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# all of an agent's subscriptions (made: a subs:made:<agent> left by session 42)
_DROP = """
local function drop(exp, of, made, agent)
  for _, p in ipairs(redis.call('ZRANGE', of, 0, -1)) do
    redis.call('ZREM', exp, agent .. '\\0' .. p)
  end
  redis.call('DEL', of, made)
end
"""

# KEYS: subs:exp, subs:of:<agent>; ARGV: agent, pattern, cap (-1: none), expiry ms, now ms
# -> -1 subscribed (or held and live: renewed), else how many live ones it holds (one
# expired, swept or not, is no longer held: it neither counts nor is renewed free).
SUBSCRIBE = """
local live = redis.call('ZSCORE', KEYS[2], ARGV[2])
if not (live and tonumber(live) > tonumber(ARGV[5])) and tonumber(ARGV[3]) >= 0 then
  local n = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[5], '+inf')
  if n >= tonumber(ARGV[3]) then return n end
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1] .. '\\0' .. ARGV[2])
return -1
"""

# while the layout before is not converted (the marker unset: Redis was unreachable at start,
# or the conversion runs meanwhile), what an unsubscribe or a park removes goes from it too:
# a later conversion never brings it back (layout: the marker's key; old: subs)
_OLD = (
    """
local function drop_old(layout, old, agent, pattern)
  if redis.call('GET', layout) == '"""
    + LAYOUT
    + """' then return 0 end
  if pattern then return redis.call('HDEL', old, agent .. '\\0' .. pattern) end
  local cursor, n = '0', 0
  repeat
    local got = redis.call('HSCAN', old, cursor, 'MATCH', agent .. '\\0*', 'COUNT', 1000)
    cursor = got[1]
    for i = 1, #got[2], 2 do n = n + redis.call('HDEL', old, got[2][i]) end
  until cursor == '0'
  return n
end
"""
)

# KEYS: subs:exp, subs:of:<agent>, layout, subs; ARGV: agent, pattern -> 1 removed, 0 none
_UNSUBSCRIBE = (
    _OLD
    + """
local old = drop_old(KEYS[3], KEYS[4], ARGV[1], ARGV[2])
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then return old end
redis.call('ZREM', KEYS[1], ARGV[1] .. '\\0' .. ARGV[2])
return 1
"""
)

# parked agents: KEYS: subs:exp, procs, holds:<me>, layout, subs, then subs:of:<agent>,
# subs:made:<agent> for each; ARGV: me, key prefix, then each agent and the generation of its
# hold here the park saw ('': none) -> those another live process holds (kept). An agent held
# here with a later generation came back since: left alone (one held with none, or an older
# one a resend after a lapse wrote late, is parked). All their subscriptions go: the
# script is atomic, so each was made before it (no clock compared: one stepping back kept some).
_PARK = (
    _NOW
    + _DROP
    + _OLD
    + """
local now = now_ms()
local others = {}
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')) do
  if p ~= ARGV[1] then others[#others + 1] = ARGV[2] .. 'holds:' .. p end
end
local kept = {}
for i = 3, #ARGV, 2 do
  local agent, live = ARGV[i], false
  local gen = redis.call('HGET', KEYS[3], agent)
  if gen and tonumber(gen) > (tonumber(ARGV[i + 1]) or 0) then
    live = true  -- (back here: a newer hold; neither kept for a re-check nor removed)
  else
    redis.call('HDEL', KEYS[3], agent)
    for _, h in ipairs(others) do
      if redis.call('HEXISTS', h, agent) == 1 then
        live = true
        kept[#kept + 1] = agent
        break
      end
    end
  end
  if not live then
    drop(KEYS[1], KEYS[i + 3], KEYS[i + 4], agent)
    drop_old(KEYS[4], KEYS[5], agent, nil)
  end
end
return kept
"""
)

# this process holds ARGV[4] live, generation ARGV[5] ('': only its heartbeat): KEYS: procs,
# holds:<me>; ARGV: me, ttl ms, then agent, generation pairs (the dead processes' entries go)
# (a later generation stored stays: a resend that read the holds before a registration, landing
# after it) -> 1 if its holds were there before (0: they lapsed or were lost, or it held none yet)
_HOLD = (
    _NOW
    + """
local now = now_ms()
local had = redis.call('EXISTS', KEYS[2])
for i = 3, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[2], ARGV[i]))
  if ARGV[i] ~= '' and not (cur and cur > tonumber(ARGV[i + 1])) then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])  -- (never over a later generation)
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return had
"""
)

# an agent that ended: all of them (LEAVE_SUBS is prepended to ``RedisBackend``'s departure)
LEAVE_SUBS = (
    _DROP
    + """
local function leave_subs(exp, of, made, agent, held)
  drop(exp, of, made, agent)
  redis.call('HDEL', held, agent)
end
"""
)

# the expiry sweep, one batch: KEYS: subs:exp; ARGV: now ms, batch, key prefix -> how many went.
# (The agents' own keys are named by what ``subs:exp`` holds: a single Redis, not a cluster.)
_SWEEP = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(gone) do
  local at = string.find(m, '\\0', 1, true)
  if at then  -- (a member without its separator names no agent: it only goes)
    local agent, p = string.sub(m, 1, at - 1), string.sub(m, at + 1)
    redis.call('ZREM', ARGV[3] .. 'subs:of:' .. agent, p)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #gone
"""

# the layout before (``subs``: agent\\0pattern -> expiry ms), one HSCAN batch into this one:
# KEYS: subs, subs:exp; ARGV: cursor, batch, now ms, key prefix -> the next cursor. What
# expired (or has no expiry: stored before session 41) is not carried over; a subscription
# the new layout holds already (made since) is left as it is.
_UPGRADE = """
local got = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', tonumber(ARGV[2]))
local all = got[2]
for i = 1, #all, 2 do
  local m, till = all[i], tonumber(all[i + 1])
  local at = string.find(m, '\\0', 1, true)
  if at and till and till > tonumber(ARGV[3]) then
    local agent, p = string.sub(m, 1, at - 1), string.sub(m, at + 1)
    if redis.call('ZADD', ARGV[4] .. 'subs:of:' .. agent, 'NX', till, p) == 1 then
      redis.call('ZADD', KEYS[2], 'NX', till, m)
    end
  end
end
return got[1]
"""


def parse_live(members: Iterable[bytes]) -> dict[str, set[str]]:
    """``subs:exp`` members (``agent\\0pattern``, read live) -> agent -> patterns."""
    out: dict[str, set[str]] = {}
    for m in members:
        agent, sep, pattern = m.decode().partition("\0")
        if sep:  # (one without its separator names no agent: the sweep removes it)
            out.setdefault(agent, set()).add(pattern)
    return out


class RedisSubscriptions:
    """The scripts above, on the backend's connection; ``run`` maps Redis's errors. ``me``
    names this process in ``procs`` (one per backend: two in one Python process are two)."""

    def __init__(self, r: aioredis.Redis, prefix: str, run: Callable[[Any], Awaitable[Any]], me: str) -> None:
        self.prefix = prefix
        self.exp = prefix + "subs:exp"
        self.me = me
        self.procs = prefix + "procs"
        self.held = f"{prefix}holds:{me}"
        self.upgraded = False  # (the layout before converted, or found converted)
        self.mine: dict[str, str] = {}  # the agents live here -> their hold's generation
        self._gen = itertools.count(1)
        self._resend = False  # a resend of every hold failed or was cut short: the next beat resends
        self._turn = asyncio.Lock()  # a resend of every hold and a park take turns (one process)
        self._r = r
        self._run = run
        self._subscribe = r.register_script(SUBSCRIBE)
        self._unsubscribe = r.register_script(_UNSUBSCRIBE)
        self._park = r.register_script(_PARK)
        self._hold = r.register_script(_HOLD)
        self._sweep = r.register_script(_SWEEP)
        self._upgrade = r.register_script(_UPGRADE)

    def keys(self, agent: str) -> list[str]:
        """subs:exp, subs:of:<agent>, and subs:made:<agent> (session 42's: deleted with them)"""
        return [self.exp, f"{self.prefix}subs:of:{agent}", f"{self.prefix}subs:made:{agent}"]

    async def upgrade(self, now_ms: int) -> int:
        """The layout before this one (``subs``, ``subs:n``) converted, once (the marker
        ``layout`` says so), ``UPGRADE_BATCH`` per script; returns the scripts run. Every process
        of the version before must have stopped: one still writing ``subs`` is not read."""
        marker = self.prefix + "layout"
        if await self._run(self._r.get(marker)) == LAYOUT.encode():
            self.upgraded = True
            return 0
        cursor: Any = b"0"
        ran = 0
        while True:
            args = [cursor, UPGRADE_BATCH, now_ms, self.prefix]
            cursor = await self._run(self._upgrade(keys=[self.prefix + "subs", self.exp], args=args))
            ran += 1
            if int(cursor) == 0:
                break
        pipe = self._r.pipeline(transaction=True)
        pipe.unlink(self.prefix + "subs", self.prefix + "subs:n")
        pipe.set(marker, LAYOUT)
        done: list[Any] = await self._run(pipe.execute())
        del done
        self.upgraded = True
        return ran

    async def hold(self, agent: str) -> None:
        """``agent`` is live on this process ('': only the heartbeat, ``BEAT_S``). If its holds
        were gone from Redis (a lapse), all it holds are sent again."""
        gen = ""
        if agent:
            gen = self.mine[agent] = str(next(self._gen))
        try:  # (a failed or cut short call may have lapsed the key or sent part of a resend)
            had = await self._run(
                self._hold(keys=[self.procs, self.held], args=[self.me, HOLD_TTL_MS, agent, gen])
            )
            if (not had or self._resend) and self.mine.keys() - {agent}:
                _logger.warning(
                    "bus: this process's hold on its %d live agents had lapsed in Redis (unreachable,"
                    " or restarted without its data) or was not all sent: sent again",
                    len(self.mine),
                )
                self._resend = True
                await self._hold_all()
        except BaseException:
            self._resend = True
            raise

    async def _hold_all(self) -> None:
        """Every hold here sent again (not while a park runs: one it parked is not sent back);
        the pending resend is done only once all of them reached Redis."""
        async with self._turn:
            held = list(self.mine.items())
            for i in range(0, len(held), HOLD_BATCH):
                args: list[Any] = [self.me, HOLD_TTL_MS]
                for agent, gen in held[i : i + HOLD_BATCH]:
                    args += [agent, gen]
                await self._run(self._hold(keys=[self.procs, self.held], args=args))
            self._resend = False

    def forget(self, agent: str) -> None:
        """``agent`` ended here (its hold goes with its departure's script)."""
        self.mine.pop(agent, None)

    async def release_all(self) -> None:
        """This process stops: it holds no agent live any more."""
        self.mine.clear()
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(self.procs, self.me)
        pipe.unlink(self.held)
        done: list[Any] = await self._run(pipe.execute())
        del done

    async def subscribe(self, agent: str, pattern: str, until_ms: int, now_ms: int, cap: int) -> int:
        """-1 subscribed (renewed), else the live ones it holds (``cap`` reached; -1: no cap)."""
        args: list[str | int] = [agent, pattern, cap, until_ms, now_ms]
        return int(await self._run(self._subscribe(keys=self.keys(agent)[:2], args=args)))

    def _old(self) -> list[str]:
        """layout (the marker), subs (the layout before)"""
        return [self.prefix + "layout", self.prefix + "subs"]

    async def unsubscribe(self, agent: str, pattern: str) -> bool:
        keys = self.keys(agent)[:2] + self._old()
        return bool(await self._run(self._unsubscribe(keys=keys, args=[agent, pattern])))

    async def unsubscribe_parked(self, agents: list[str]) -> list[str]:
        """Their subscriptions made before now (Redis's clock) go, but for those another live
        process holds (returned) and those back here since (a newer hold): no longer held here
        otherwise. The generations are read now, before any round trip; an agent leaves
        ``mine`` only once its park reached Redis (a failed one keeps it, to be parked again).
        The layout before is converted first (an old ``subs`` hash is not scanned per agent)."""
        gens = {a: self.mine.get(a, "") for a in agents}
        if not self.upgraded:
            await self.upgrade(int(time.time() * 1000))
        kept: list[str] = []
        async with self._turn:
            for i in range(0, len(agents), PARK_BATCH):
                # (one back here since gens was read holds a newer generation: its fresh
                # subscriptions are its own, even if Redis lost its hold)
                batch = [a for a in agents[i : i + PARK_BATCH] if self.mine.get(a, "") == gens[a]]
                if not batch:
                    continue
                keys = [self.exp, self.procs, self.held, *self._old()]
                args = [self.me, self.prefix]
                for agent in batch:
                    keys += self.keys(agent)[1:]
                    args += [agent, gens[agent]]
                got: list[Any] = await self._run(self._park(keys=keys, args=args))
                kept += [bytes(a).decode() for a in got]
                for agent in batch:  # (not one back here meanwhile: a newer generation)
                    if gens[agent] and self.mine.get(agent) == gens[agent]:
                        del self.mine[agent]
        return kept

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
