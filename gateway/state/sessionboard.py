"""Where every gateway process's session agents live, on Redis (``[state] redis_url``).

A session agent (an MCP session acting as an agent, ``AgentRegistry.for_session``) lives in
the one process (worker or replica) its session reached. So that an operator's suspend /
resume / terminate answered by any process reaches it, each process writes the ids of the
session agents it holds, and every ``RENEW_S`` writes them again:

- ``symbi:sagent:id:ID``: a hash, one field per process holding agent ``ID`` (its process name,
  ``gateway.state.leases.process_name``) whose value is that process's record (name, state,
  and ``until``: the epoch ms past which it no longer counts); the key expires ``ttl_ms``
  after its last write, so a process that died leaves nothing behind for long;
- ``symbi:sagent:orders:PROCESS``: the orders left for one process (a list, as a hosted
  agent's ``symbi:lease:orders:NAME``), which it takes (reads and deletes in one transaction)
  at each renewal.

One id is held by one process in practice (ids are keyed per data dir; an HTTP session is
one process's), but a hash keeps every holder should two processes share an id key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis

from gateway.state.leases import LEASE_TTL_MS

SAGENT = "symbi:sagent:id:"
INBOX = "symbi:sagent:orders:"


class SessionBoard:
    """This process's session agents on the shared Redis, and its inbox of orders."""

    def __init__(self, client: aioredis.Redis, *, owner: str, ttl_ms: int = LEASE_TTL_MS) -> None:
        self.redis = client  # the process's one client (``build_state``), closed by its owner
        self.owner = owner
        self.ttl_ms = ttl_ms

    async def publish(self, docs: Mapping[str, dict[str, Any]], gone: Iterable[str]) -> None:
        """Write this process's record of each agent in ``docs`` (id -> record) for another
        ``ttl_ms``; remove it from those in ``gone``. Raises ``RedisError``/``OSError``."""
        until = int(time.time() * 1000) + self.ttl_ms
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id, doc in docs.items():
                pipe.hset(SAGENT + agent_id, self.owner, json.dumps({**doc, "until": until}, sort_keys=True))
                pipe.pexpire(SAGENT + agent_id, self.ttl_ms)
            for agent_id in gone:
                pipe.hdel(SAGENT + agent_id, self.owner)
            await pipe.execute()

    async def holders(self, agent_id: str) -> dict[str, dict[str, Any]]:
        """The processes holding session agent ``agent_id`` now (process -> its record),
        expired records left out. Raises ``RedisError``/``OSError``."""
        raw: dict[Any, Any] = await self.redis.hgetall(SAGENT + agent_id)  # type: ignore[misc]
        now = time.time() * 1000
        out: dict[str, dict[str, Any]] = {}
        for owner, value in raw.items():
            try:
                doc = json.loads(value)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("until"), int | float) and doc["until"] > now:
                out[owner.decode() if isinstance(owner, bytes) else str(owner)] = doc
        return out

    async def order(self, owners: Iterable[str], order: str, ttl_s: float) -> None:
        """Leave ``order`` (JSON) in each process's inbox; not taken within ``ttl_s``, it
        expires. Raises ``RedisError``/``OSError`` (the caller refuses the action)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for owner in owners:
                pipe.rpush(INBOX + owner, order)
                pipe.pexpire(INBOX + owner, int(ttl_s * 1000))
            await pipe.execute()

    async def take_orders(self) -> list[bytes]:
        """The orders left for this process, taken once: read and deleted in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrange(INBOX + self.owner, 0, -1)
            pipe.delete(INBOX + self.owner)
            got, _ = await pipe.execute()
        return list(got)
