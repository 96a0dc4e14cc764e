"""Where every gateway process's session agents live, on Redis (``[state] redis_url``).

A session agent (an MCP session acting as an agent, ``AgentRegistry.for_session``) lives in
the one process (worker or replica) its session reached. So that an operator's suspend /
resume / terminate answered by any process reaches it, each process writes the ids of the
session agents it holds when they change, and every ``RENEW_S`` says it is still alive:

- ``symbi:sagent:id:ID``: a hash, one field per process holding agent ``ID`` (its process name,
  ``gateway.state.leases.process_name``) whose value is that process's record (name, state,
  principal), written when the agent arrives or changes state, removed when it ends; the key
  expires ``record_ttl_ms`` after its last write (the process writes every record again each
  third of that, so a live agent's key never lapses and a dead process's goes in the end);
- ``symbi:sagent:alive:PROCESS``: the process's liveness, set again at every renewal for
  ``ttl_ms``: a record counts only while its process's key exists, so renewing costs one
  command however many agents the process holds, and a process that died stops counting
  ``ttl_ms`` after its last renewal. Found gone at a renewal (the process could not reach
  Redis for that long, or Redis lost its data), every record is written again;
- ``symbi:sagent:orders:PROCESS``: the orders left for one process (a list, as a hosted
  agent's ``symbi:lease:orders:NAME``), which it takes (reads and deletes in one transaction)
  at each renewal and at once when woken on ``symbi:sagent:wake:PROCESS`` (pub/sub: a wake-up
  lost while its connection was down waits for the renewal, never longer).

One id is held by one process in practice (ids are keyed per data dir; an HTTP session is
one process's), but a hash keeps every holder should two processes share an id key. A record
with its own ``until`` (the epoch ms past which it no longer counts; written by session 38's
processes, which renewed each record) counts until then, so a rolling upgrade keeps them found.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from gateway.state.leases import LEASE_TTL_MS
from gateway.state.redisclient import wakeups

SAGENT = "symbi:sagent:id:"
ALIVE = "symbi:sagent:alive:"
INBOX = "symbi:sagent:orders:"
WAKE = "symbi:sagent:wake:"
RECORD_TTL_MS = 600_000  # a record's key, written again each third of this by its live process


class SessionBoard:
    """This process's session agents on the shared Redis, and its inbox of orders."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        owner: str,
        ttl_ms: int = LEASE_TTL_MS,
        record_ttl_ms: int = RECORD_TTL_MS,
    ) -> None:
        self.redis = client  # the process's one client (``build_state``), closed by its owner
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.record_ttl_ms = record_ttl_ms

    async def publish(self, docs: Mapping[str, dict[str, Any]], gone: Iterable[str]) -> bool:
        """Write this process's record of each agent in ``docs`` (id -> record), remove it from
        those in ``gone``, and say this process is alive for another ``ttl_ms``: whether it
        still was (False: Redis lost it; every record must be written again). Raises
        ``RedisError``/``OSError``."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id, doc in docs.items():
                pipe.hset(SAGENT + agent_id, self.owner, json.dumps(doc, sort_keys=True))
                pipe.pexpire(SAGENT + agent_id, self.record_ttl_ms)
            for agent_id in gone:
                pipe.hdel(SAGENT + agent_id, self.owner)
            pipe.set(ALIVE + self.owner, "1", px=self.ttl_ms, get=True)
            *_, before = await pipe.execute()
        return before is not None

    async def holders(self, agent_id: str) -> dict[str, dict[str, Any]]:
        """The processes holding session agent ``agent_id`` now (process -> its record), those
        no longer alive left out. Raises ``RedisError``/``OSError``."""
        raw: dict[Any, Any] = await self.redis.hgetall(SAGENT + agent_id)  # type: ignore[misc]
        docs: dict[str, dict[str, Any]] = {}
        for owner, value in raw.items():
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs[owner.decode() if isinstance(owner, bytes) else str(owner)] = doc
        if not docs:
            return {}
        alive = await self.redis.mget([ALIVE + owner for owner in docs])
        now = time.time() * 1000
        return {
            owner: doc
            for (owner, doc), live in zip(docs.items(), alive, strict=True)
            if live is not None or (isinstance(doc.get("until"), int | float) and doc["until"] > now)
        }

    async def order(self, owners: Iterable[str], order: str, ttl_s: float) -> None:
        """Leave ``order`` (JSON) in each process's inbox and wake it; not taken within
        ``ttl_s``, it expires. Raises ``RedisError``/``OSError`` (the caller refuses the action)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for owner in owners:
                pipe.rpush(INBOX + owner, order)
                pipe.pexpire(INBOX + owner, int(ttl_s * 1000))
                pipe.publish(WAKE + owner, "1")
            await pipe.execute()

    async def take_orders(self) -> tuple[list[bytes], float]:
        """The orders left for this process, taken once (read and deleted in one transaction),
        and Redis's clock then (epoch s): an order's age is judged on the clock that stamped it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(INBOX + self.owner, 0, -1)
            pipe.delete(INBOX + self.owner)
            pipe.time()
            got, _, (sec, usec) = await pipe.execute()
        return list(got), sec + usec / 1e6

    async def wakeups(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever an order is left for this process, until cancelled. Raises
        ``RedisError``/``OSError`` when the channel is lost (the caller subscribes again)."""
        await wakeups(self.redis, WAKE + self.owner, wake)
