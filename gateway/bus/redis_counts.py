"""The bus's caps counted in Redis (``gateway.bus.counts``), so each holds across every gateway
process sharing the Redis: one atomic script per operation, one round trip.

Keys (prefix ``symbi:bus:``):

* ``vol:<principal>``: hash minute -> bytes put on the bus; a delivery is checked, enqueued
  and counted in one script with its inbox's buffer check (``_DELIVER``). Minutes older than
  the window are pruned when the principal sends; the key expires a minute after the window
  since its last write.
* ``subs:exp`` and ``subs:of:<agent>`` (the subscriptions: ``gateway.bus.redis_subs``): a
  subscription is counted (the agent's live ones) and added in one script, O(log n).
* ``open`` (hash ``agent\\0id`` -> ``seq\\nrequester\\nexpiry``), ``open:q`` (its order:
  ``agent\\0seq\\0id``, all at score 0), ``open:n`` (agent -> requests held), ``open:seq``:
  the open requests. Past the cap the agent holding the most gives up its oldest. All four
  expire together, the window after the last request received (by then every request they
  hold has expired).

Redis unreachable is ``BusUnavailable``: the send, publish, subscribe or receive is refused,
never admitted uncounted.
"""

from __future__ import annotations

from typing import Any

from gateway.bus.counts import Caps, stored_size
from gateway.bus.message import SecureMessage
from gateway.bus.quotas import MINUTE_MS, subscriptions_refused, volume_refused
from gateway.bus.redis_backend import OPEN_KEYS, PREFIX, RedisBackend
from gateway.bus.redis_subs import parse_live
from gateway.errors import BusBufferFull

# the bytes ``who`` holds within the window (older minutes pruned): KEYS[1] its hash, ARGV[1] the oldest minute kept
_HELD = """
local function held(key, oldest)
  local total = 0
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if tonumber(all[i]) < oldest then redis.call('HDEL', key, all[i]) else total = total + tonumber(all[i + 1]) end
  end
  return total
end
"""

# KEYS: inbox stream, stats, vol:<who>; ARGV: buffer limit, h, n, c, s, e, size, byte limit,
# minute, oldest minute, ttl ms. -> the entry id, {0} buffer full, {1, held} past the bytes
_DELIVER = (
    _HELD
    + """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return {0} end
local size = tonumber(ARGV[7])
local have = held(KEYS[3], tonumber(ARGV[10]))
if have + size > tonumber(ARGV[8]) then return {1, have} end
redis.call('HINCRBY', KEYS[3], ARGV[9], size)
redis.call('PEXPIRE', KEYS[3], ARGV[11])
redis.call('HINCRBY', KEYS[2], 'sent', 1)
return redis.call('XADD', KEYS[1], '*', 'h', ARGV[2], 'n', ARGV[3], 'c', ARGV[4], 's', ARGV[5], 'e', ARGV[6])
"""
)

# a publication: KEYS: vol:<who>, subs:exp; ARGV: size, byte limit, minute, oldest minute, ttl
# ms, now ms -> {-1 counted or the bytes held, the live subscriptions (agent\\0pattern, ...)}
# (the charge and the read at once)
_PUBLICATION = (
    _HELD
    + """
local have = held(KEYS[1], tonumber(ARGV[4]))
if have + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {have, {}} end
redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {-1, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[6], '+inf')}
"""
)

# KEYS: open, open:q, open:n, open:seq; ARGV: agent, id, requester, expiry, cap, ttl ms
_OPEN_ADD = """
local f = ARGV[1] .. '\\0' .. ARGV[2]
local was = redis.call('HGET', KEYS[1], f)
if was then
  local seq = string.match(was, '^(%d+)\\n')
  redis.call('HSET', KEYS[1], f, seq .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4])
else
  local seq = redis.call('INCR', KEYS[4])
  redis.call('HSET', KEYS[1], f, seq .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4])
  redis.call('ZADD', KEYS[2], 0, ARGV[1] .. '\\0' .. string.format('%020d', seq) .. '\\0' .. ARGV[2])
  redis.call('ZINCRBY', KEYS[3], 1, ARGV[1])
end
while redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) do
  local most = redis.call('ZREVRANGE', KEYS[3], 0, 0)[1]
  local first = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. most .. '\\0', '(' .. most .. '\\1', 'LIMIT', 0, 1)[1]
  redis.call('ZREM', KEYS[2], first)
  redis.call('HDEL', KEYS[1], most .. '\\0' .. string.sub(first, #most + 23))
  if tonumber(redis.call('ZINCRBY', KEYS[3], -1, most)) <= 0 then redis.call('ZREM', KEYS[3], most) end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return 1
"""

# KEYS: open, open:q, open:n; ARGV: agent, id -> {requester, expiry} or nil
_OPEN_POP = """
local f = ARGV[1] .. '\\0' .. ARGV[2]
local was = redis.call('HGET', KEYS[1], f)
if not was then return nil end
local seq, requester, expiry = string.match(was, '^(%d+)\\n([^\\n]*)\\n(%d+)$')
redis.call('HDEL', KEYS[1], f)
redis.call('ZREM', KEYS[2], ARGV[1] .. '\\0' .. string.format('%020d', tonumber(seq)) .. '\\0' .. ARGV[2])
if tonumber(redis.call('ZINCRBY', KEYS[3], -1, ARGV[1])) <= 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
return {requester, expiry}
"""


class RedisCounts:
    def __init__(self, backend: RedisBackend, caps: Caps) -> None:
        self.backend = backend
        self.caps = caps
        r = backend.redis
        self._deliver = r.register_script(_DELIVER)
        self._publication = r.register_script(_PUBLICATION)
        self._open_add = r.register_script(_OPEN_ADD)
        self._open_pop = r.register_script(_OPEN_POP)

    def _window(self, now_ms: int) -> list[int]:
        """minute, oldest minute kept (a bucket is kept up to a minute longer), the key's ttl"""
        oldest = (now_ms - self.caps.window_ms) // MINUTE_MS
        return [now_ms // MINUTE_MS, oldest, self.caps.window_ms + MINUTE_MS]

    async def deliver(self, inbox: str, msg: SecureMessage, limit: int, charged: str, now_ms: int) -> None:
        key = await self.backend.inbox_key(inbox)
        f, size = msg.to_fields(), stored_size(msg)
        args: list[Any] = [limit, f["h"], f["n"], f["c"], f["s"], msg.expires_ms]
        args += [size, self.caps.bytes_per_principal, *self._window(now_ms)]
        keys = [key, PREFIX + "stats", f"{PREFIX}vol:{charged}"]
        got = await self.backend.run(self._deliver(keys=keys, args=args))
        if isinstance(got, list) and got[0] == 0:  # counted as buffer_full by Bus._deliver
            raise BusBufferFull(
                f"the inbox of {inbox} is full (runtime.message_buffer_size = {limit}); the message was not accepted"
            )
        if isinstance(got, list):
            raise volume_refused(charged, int(got[1]), size, self.caps.bytes_per_principal)

    async def publication(self, who: str, size: int, now_ms: int) -> dict[str, set[str]]:
        args = [size, self.caps.bytes_per_principal, *self._window(now_ms), now_ms]
        keys = [f"{PREFIX}vol:{who}", self.backend.subs.exp]
        got: list[Any] = await self.backend.run(self._publication(keys=keys, args=args))
        held, raw = got
        if int(held) >= 0:
            raise volume_refused(who, int(held), size, self.caps.bytes_per_principal)
        return parse_live(raw)

    async def subscribe(self, agent: str, pattern: str, until_ms: int, now_ms: int) -> None:
        # the agent's live ones counted (an expired one, swept or not, no longer counts); made
        # when Redis says (the clock a park compares with)
        held = await self.backend.subs.subscribe(agent, pattern, until_ms, now_ms, self.caps.subscriptions)
        if held >= 0:
            raise subscriptions_refused(agent, held)

    async def open_add(self, agent: str, request_id: str, requester: str, expires_ms: int) -> None:
        args: list[str | int] = [agent, request_id, requester, expires_ms, self.caps.open_requests]
        args.append(self.caps.window_ms)
        await self.backend.run(self._open_add(keys=list(OPEN_KEYS), args=args))

    async def open_pop(self, agent: str, request_id: str) -> tuple[str, int] | None:
        got: Any = await self.backend.run(self._open_pop(keys=list(OPEN_KEYS[:3]), args=[agent, request_id]))
        if not got:
            return None
        requester, expiry = got
        return bytes(requester).decode(), int(expiry)

    def forget(self, agent: str) -> None:
        del agent  # its open requests go with its entry (RedisBackend.forget_agent)

    def sweep(self, now_ms: int) -> None:
        del now_ms  # the keys expire in Redis
