"""Suspended principals on Redis (``[state] redis_url``): a session agent's suspension is its
principal's on every replica (``gateway.runtime.holds``).

- ``symbi:held:principals``: a hash, qualified principal -> its suspension (JSON: reason, the
  agent it came from, when, by whom); ``symbi:held:order``: the same principals scored by when
  they were suspended; past ``limit`` principals a new suspension is refused (the process keeps
  it in force for itself, logged), never made room for by dropping the oldest;
- ``symbi:held:version``: a counter every change bumps (in the same script as the change), so
  a process reads the whole hash again only when something changed (one ``GET`` per renewal
  otherwise), and never applies a read older than a change it made itself;
- ``symbi:held:changed``: pub/sub, the new version after each change: the other processes read
  it at once (a wake-up lost while a connection was down waits for the next renewal).

A suspension is written once (the first reason stays); a clear removes it. Nothing here
expires: a suspension lasts until an operator clears it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.state.redisclient import wakeups

HELD = "symbi:held:principals"
ORDER = "symbi:held:order"
VERSION = "symbi:held:version"
CHANGED = "symbi:held:changed"

# KEYS: hash, order, version; ARGV: principal, doc, at (epoch s), limit, channel
_HOLD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return {0, tonumber(redis.call('GET', KEYS[3]) or '0')}
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return {-1, tonumber(redis.call('GET', KEYS[3]) or '0')}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[5], v)
return {1, v}
"""
# KEYS: hash, order, version; ARGV: principal, channel
_CLEAR = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if n == 0 then return {0, tonumber(redis.call('GET', KEYS[3]) or '0')} end
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], v)
return {1, v}
"""
# KEYS: hash, version: the version and the hash, read together
_SNAPSHOT = """
return {tonumber(redis.call('GET', KEYS[2]) or '0'), redis.call('HGETALL', KEYS[1])}
"""


class HoldBoard:
    """Every process's view of the suspended principals, on the process's one Redis client."""

    def __init__(self, client: aioredis.Redis, *, limit: int) -> None:
        self.redis = client  # the process's one client (``build_state``), closed by its owner
        self.limit = limit
        self._hold = client.register_script(_HOLD)
        self._clear = client.register_script(_CLEAR)
        self._snapshot = client.register_script(_SNAPSHOT)

    async def hold(self, principal: str, doc: dict[str, Any], at: float) -> tuple[bool | None, int]:
        """Suspend ``principal`` unless it is already: (new; None: refused, ``limit`` principals
        are held, none is ever dropped to make room; the version after). Raises
        ``RedisError``/``OSError``."""
        args: list[str | float] = [principal, json.dumps(doc, sort_keys=True), at, self.limit, CHANGED]
        new, version = await self._hold(keys=[HELD, ORDER, VERSION], args=args)
        return (None if int(new) < 0 else bool(new)), int(version)

    async def clear(self, principal: str) -> tuple[bool, int]:
        """Clear ``principal``'s suspension: (it was suspended, the version after)."""
        gone, version = await self._clear(keys=[HELD, ORDER, VERSION], args=[principal, CHANGED])
        return bool(gone), int(version)

    async def version(self) -> int:
        raw = await self.redis.get(VERSION)
        return int(raw) if raw is not None else 0

    async def snapshot(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The version and every suspension (a record that is not a JSON object is left out)."""
        version, flat = await self._snapshot(keys=[HELD, VERSION])
        docs: dict[str, dict[str, Any]] = {}
        for i in range(0, len(flat) - 1, 2):
            key, raw = flat[i], flat[i + 1]
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs[key.decode() if isinstance(key, bytes) else str(key)] = doc
        return int(version), docs

    async def wakeups(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` at every change, until cancelled. Raises ``RedisError``/``OSError``
        when the channel is lost (the caller subscribes again)."""
        await wakeups(self.redis, CHANGED, wake)
