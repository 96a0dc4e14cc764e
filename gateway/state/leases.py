"""Hosted agents' leases on Redis: with ``[state] redis_url`` one gateway process runs a
hosted agent at a time, whichever of the replicas (or ``symbi serve --workers N``) it is.

One lease per hosted agent, ``symbi:lease:agent:NAME``, holds a random owner token:

- taken with ``SET key token NX PX ttl`` (only when no process holds it);
- renewed by its holder every ``RENEW_S`` with a compare-and-extend script (the ``PEXPIRE``
  happens only while the key still holds the holder's own token), which also writes the
  holder's status next to it (``symbi:lease:status:NAME``, same expiry: who runs the agent,
  for every replica's ``/api/status``) and takes any start request another replica left for
  it (``symbi:lease:wake:NAME``: ``symbi agents run NAME`` answered by a replica that does
  not hold the lease; kept until a holder takes it, an operator's terminate withdraws it,
  or a replica whose config disables the agent starts);
- an operator's suspend / resume / terminate answered by a replica that does not hold the lease
  is left for the holder as an order (``symbi:lease:orders:NAME``, a list, ``gateway.runtime.orders``),
  which the holder takes (reads and deletes in one transaction) after each renewal;
- released on stop with a compare-and-delete script.

A process that does not know the token can neither extend nor release the lease: a forged
or overwritten key fails the holder's next renewal (it stops its agent), and the forger's
own renewals only hold a lease it took itself. The holder counts the lease valid until
``LEASE_TTL_MS`` after it *sent* the command that last set or extended it (Redis starts the
expiry later, when it gets the command), and stops its agent ``STOP_MARGIN_S`` before that
(``gateway.runtime.leased``): two processes never run the same agent at once.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.state.redisclient import RedisUser

LEASE_TTL_MS = 10_000  # a dead holder's lease expires this long after its last renewal
RENEW_S = 3.0  # the holder renews (and the others try to take a free lease) this often
STOP_MARGIN_S = 4.0  # a holder that could not renew stops its agent this long before expiry
RETRY_S = 0.5  # after a failed renewal, the next try
LEASE = "symbi:lease:agent:"
STATUS = "symbi:lease:status:"
WAKE = "symbi:lease:wake:"
WITHDRAWN = "symbi:lease:withdrawn:"  # the latest kept withdrawal's time (Redis's clock)
ORDERS = "symbi:lease:orders:"
# a start's life once no live replica's config has its agent (each one that has it renews it,
# ``watch``): a removed agent's start fired if the agent came back, months later
START_TTL_MS = 24 * 3600 * 1000

# KEYS: the lease, its status; ARGV: token, ttl (ms), status JSON
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: the lease, its status, its start requests; ARGV: token, ttl (ms), status JSON.
# 0: not ours (expired, released, or someone else's); 1: extended; {2, when the start request
# taken was asked (its stamp, ``_WAKE``; "": none)}: extended + a start request. The stamp as
# written (a Lua number would be cut to an integer, its string to 14 digits)
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
local v = redis.pcall('GET', KEYS[3])
if redis.call('DEL', KEYS[3]) == 0 then return 1 end
if type(v) ~= 'string' then v = '' end
return {2, string.match(v, ' ([0-9.]+)$') or ''}
"""
# KEYS: a start request, the last withdrawal's time; ARGV: who asked, when it was asked
# (Redis's clock, epoch s, or ""). Stamped with when it was asked, else now (a withdrawal
# compares it): one kept in a process through an outage is stamped with its request's time,
# not with when it reached Redis, and dropped when a terminate after it was carried out
# first (a withdrawal kept by the holder through the same outage). 0: dropped
_WAKE = f"""
local t = redis.call('TIME')
local at = t[1] .. '.' .. string.format('%06d', t[2])
local asked = tonumber(ARGV[2])
if asked then
  local gone = tonumber(redis.call('GET', KEYS[2]) or '')
  if gone and asked <= gone then return 0 end
  if asked < tonumber(at) then at = ARGV[2] end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. at, 'PX', {START_TTL_MS})
return 1
"""
# KEYS: a start request, the last withdrawal's time; ARGV: a withdrawal's time (Redis's
# clock, epoch s; "": now). Only a start asked by then is deleted (an unstamped one counts as
# asked by then); the time is kept (at most Redis's now: an estimate ahead, or a clock stepped
# back, must not drop later starts; for a day) for a start asked before it that reaches Redis
# after it. 1: deleted
_UNWAKE_BEFORE = f"""
local t = redis.call('TIME')
local now = tonumber(t[1] .. '.' .. string.format('%06d', t[2]))
local before = tonumber(ARGV[1])
if not before or before > now then before = now end
local gone = tonumber(redis.call('GET', KEYS[2]) or '')
if not gone or before > gone then redis.call('SET', KEYS[2], tostring(before), 'PX', {START_TTL_MS}) end
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local at = tonumber(string.match(v, ' ([0-9.]+)$'))
if at and at > before then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: the lease, its status; ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


def process_name(data_dir: os.PathLike[str] | str) -> str:
    """This process as the status names it: host, pid and data dir (``worker-1`` under
    ``symbi serve --workers``; a replica's own volume in compose or Kubernetes)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.fspath(data_dir)}"


@dataclass
class Renewal:
    held: bool  # the lease is still ours, extended
    # it took a start request (``symbi agents run``), asked then on Redis's clock (epoch s; 0.0:
    # not stamped, asked before any terminate, as ``unwake`` counts it); None: none taken
    asked: float | None = None

    @property
    def woken(self) -> bool:
        return self.asked is not None


class Lease:
    """One hosted agent's lease, as this process sees it (a fresh token per acquire)."""

    def __init__(self, board: LeaseBoard, name: str) -> None:
        self.board = board
        self.name = name
        self.token = ""
        self.valid_until = 0.0  # monotonic: the lease is ours until then at the latest

    @property
    def keys(self) -> tuple[str, str, str]:
        return (LEASE + self.name, STATUS + self.name, WAKE + self.name)

    def _status(self, doc: dict[str, Any]) -> str:
        return json.dumps({"holder": self.board.owner, "updated": time.time(), **doc}, sort_keys=True)

    async def acquire(self, status: dict[str, Any]) -> bool:
        """Take the lease if no process holds it. Raises ``RedisError``/``OSError``."""
        token = secrets.token_hex(16)
        sent = time.monotonic()
        ok = await self.board.acquire_script(
            keys=self.keys[:2], args=[token, self.board.ttl_ms, self._status(status)]
        )
        if ok == 1:
            self.token, self.valid_until = token, sent + self.board.ttl_ms / 1000
            return True
        return False

    async def renew(self, status: dict[str, Any]) -> Renewal:
        """Extend the lease if it is still ours. Raises ``RedisError``/``OSError``."""
        sent = time.monotonic()
        got = await self.board.renew_script(
            keys=self.keys, args=[self.token, self.board.ttl_ms, self._status(status)]
        )
        if got == 0:
            self.token, self.valid_until = "", 0.0
            return Renewal(held=False)
        self.valid_until = sent + self.board.ttl_ms / 1000
        return Renewal(held=True, asked=_asked(got[1]) if isinstance(got, list) else None)

    async def release(self) -> bool:
        """Give the lease back if it is still ours. Raises ``RedisError``/``OSError``."""
        token, self.token, self.valid_until = self.token, "", 0.0
        return bool(token) and await self.board.release_script(keys=self.keys[:2], args=[token]) == 1


class LeaseBoard(RedisUser):
    """The Redis every replica keeps its hosted agents' leases, statuses and start requests in."""

    def __init__(
        self,
        url: str,
        *,
        owner: str,
        timeout_s: float,
        ttl_ms: int = LEASE_TTL_MS,
        client: aioredis.Redis | None = None,
    ) -> None:
        super().__init__(url, timeout_s, client)  # ``client``: the process's one (``build_state``)
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.redis = self._r
        self.acquire_script = self.redis.register_script(_ACQUIRE)
        self.renew_script = self.redis.register_script(_RENEW)
        self.release_script = self.redis.register_script(_RELEASE)
        self.wake_script = self.redis.register_script(_WAKE)
        self.unwake_script = self.redis.register_script(_UNWAKE_BEFORE)

    def lease(self, name: str) -> Lease:
        return Lease(self, name)

    async def statuses(self, names: list[str]) -> dict[str, dict[str, Any] | None]:
        """Each agent's holder status (None: no process holds its lease)."""
        if not names:
            return {}
        return _statuses(names, await self.redis.mget([STATUS + n for n in names]))

    async def wake(self, name: str, asked: float | None = None) -> bool:
        """Ask the holder of ``name``'s lease to start it (taken at its next renewal). Kept until
        a holder takes it, a terminate withdraws it (``unwake``) or a replica whose config
        disables ``name`` starts (``drop_starts``), or ``START_TTL_MS`` after the last live
        replica whose config has ``name`` (``watch``): one that lived ``LEASE_TTL_MS`` was
        lost when no replica could take the lease that long (every log broken), after a 202.
        One per agent (a second start asked before it is taken is the same start). ``asked``:
        when it was asked on Redis's clock, if earlier than now (kept here through an outage).
        False: dropped, a terminate asked after it was carried out first."""
        stamp = "" if asked is None else repr(asked)
        keys = [WAKE + name, WITHDRAWN + name]
        return bool(await self.wake_script(keys=keys, args=[self.owner, stamp]))  # stamped: ``unwake``

    async def unwake(self, name: str, before: float | None = None) -> bool:
        """Withdraw a start of ``name`` not taken yet (an operator's terminate came after it):
        True when there was one (deleted). ``before``: the terminate's time on Redis's clock, when
        the withdrawal comes later (Redis was unreachable): a start asked after it is kept (it
        was deleted, a new request lost); None: now. Either way the time is left on Redis, so a
        start asked before it and kept in a replica through an outage is dropped when it comes
        (``wake``). Raises ``RedisError``/``OSError``."""
        stamp = "" if before is None else repr(before)  # "": now (every start there is older)
        return bool(await self.unwake_script(keys=[WAKE + name, WITHDRAWN + name], args=[stamp]))

    async def watch(self, names: list[str], enabled: list[str]) -> Look:
        """The lease runner's look every ``RENEW_S``, one round trip: each of ``names``'s holder
        status (as ``statuses``), Redis's clock (epoch s), and the life (``START_TTL_MS``) of
        the starts waiting for ``enabled`` (the agents this config enables) renewed: a start
        lives while a live replica has its agent, so an outage of every holder does not lose
        it, and a start of an agent no replica has any more expires (a rolling deploy's other
        configs renew theirs). No scan. Each part's reply is its own: one Redis refuses (an ACL
        without ``PEXPIRE``) fails that part only (``Look.failed``), not the statuses and the
        clock with it. Raises ``RedisError``/``OSError`` when Redis is not reached."""
        async with self.redis.pipeline(transaction=False) as pipe:
            if names:
                pipe.mget([STATUS + n for n in names])
            pipe.time()
            for name in enabled:
                pipe.pexpire(WAKE + name, START_TTL_MS)
            got = await pipe.execute(raise_on_error=False)
        if not names:
            got = [[], *got]
        raw, time_, renewed = got[0], got[1], got[2:]
        failed = [
            f"the starts of {n} not renewed ({e})"
            for n, e in zip(enabled, renewed, strict=True)
            if _refused(e)
        ]
        statuses: dict[str, dict[str, Any] | None] | None = None
        if _refused(raw):
            failed.append(f"the statuses not read ({raw})")
        else:
            statuses = _statuses(names, raw)
        if _refused(time_):
            failed.append(f"the clock not read ({time_})")
        return Look(statuses, None if _refused(time_) else _epoch(time_), failed)

    async def drop_starts(self, names: list[str]) -> int:
        """Delete the start requests of ``names`` (agents the config disables; one ``DEL``, no
        scan of the keyspace): kept with no expiry, one fired whenever its agent was enabled
        again, weeks later. How many there were. Raises ``RedisError``/``OSError``."""
        if not names:
            return 0
        return int(await self.redis.delete(*(WAKE + n for n in names)))

    async def order(self, name: str, order: str, ttl_s: float) -> None:
        """Leave an operator's order (JSON) for the holder of ``name``'s lease; the orders not
        taken within ``ttl_s`` expire. Raises ``RedisError``/``OSError`` (the caller refuses)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(ORDERS + name, order)
            pipe.pexpire(ORDERS + name, int(ttl_s * 1000))
            await pipe.execute()

    async def take_orders(self, name: str) -> tuple[list[bytes], float]:
        """The orders left for ``name``, taken once (read and deleted in one transaction), and
        Redis's clock then (epoch s): an order's age is judged on the clock that stamped it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(ORDERS + name, 0, -1)
            pipe.delete(ORDERS + name)
            pipe.time()
            got, _, time_ = await pipe.execute()
        return list(got), _epoch(time_)

    async def now(self) -> float:
        """Redis's clock (epoch s): what orders are stamped with, so replicas' clocks never matter."""
        return await redis_now(self.redis)


async def redis_now(client: aioredis.Redis) -> float:
    """The Redis server's clock (epoch s). Raises ``RedisError``/``OSError``."""
    return _epoch(await client.time())


@dataclass(frozen=True)
class Look:
    """What ``LeaseBoard.watch`` read, part by part (None: that part failed, said in ``failed``)."""

    statuses: dict[str, dict[str, Any] | None] | None
    now: float | None  # Redis's clock (epoch s)
    failed: list[str]  # each part Redis refused, and why (readable: for the log)


def _refused(reply: object) -> bool:
    """A pipeline reply that is Redis's refusal (``execute(raise_on_error=False)`` returns it)."""
    return isinstance(reply, Exception)


def _epoch(time_: tuple[int, int]) -> float:
    """What Redis's TIME answered (seconds, microseconds) as epoch seconds."""
    sec, usec = time_
    return float(sec) + float(usec) / 1e6


def _asked(stamp: bytes | str) -> float:
    """A start request's stamp as the renewal that took it read it (0.0: none, or not a time:
    asked before any terminate, as ``_UNWAKE_BEFORE`` counts it)."""
    try:
        return float(stamp) if stamp else 0.0
    except ValueError:
        return 0.0


def _statuses(names: list[str], raw: list[bytes | None]) -> dict[str, dict[str, Any] | None]:
    """``names``' holder statuses from their MGET (None: no process holds the lease)."""
    return {n: (_status(v) if v is not None else None) for n, v in zip(names, raw, strict=True)}


def _status(raw: bytes) -> dict[str, Any]:
    """One holder's status; ``{}`` (held, nothing known: not Running, no key) when no gateway
    wrote it (not a JSON object). Its ``ValueError`` ended the lease runner's task group, and a
    credential check answered an error; its agent's alone now, and every reader fails closed."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
