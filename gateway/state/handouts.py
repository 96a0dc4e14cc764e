"""The hand-outs (``gateway.handouts``) of every replica, in Redis.

A link upstream A hands out through one replica is read, often, through another: a stateless
(2026-era) client's requests go to whichever replica the balancer picks, and a new session of
the same user to any. Each replica's own memory would not know the link there, and another
upstream's catch-all template would take the read. So with ``[state] redis_url`` every
replica writes what its upstreams hand out to Redis before the result goes to the client, and
looks there before it routes a read of a URI nobody lists.

Per upstream one sorted set of URI digests (16 bytes each), scored by when they were handed
out, cut to the newest ``per_upstream`` (as each replica's memory is: one upstream's hand-outs
never push out another's), and gone ``RETAIN_MS`` after the last hand-out. A Redis that
cannot be reached is ``StateUnavailable``: the result (or the read) is refused, not passed on
with a claim no other replica could see.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.state.health import safe_url

PREFIX = "symbi:ho:"
RETAIN_MS = 7 * 24 * 3600 * 1000  # an upstream that hands out nothing for a week: its set goes


class RedisHandOuts:
    """The replicas' shared hand-outs (``HandedOut.shared``)."""

    def __init__(self, url: str, *, timeout_s: float, per_upstream: int) -> None:
        self._where = f"the replicas' hand-outs (Redis at {safe_url(url)})"
        self._per_upstream = per_upstream
        self._r: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )

    def _unavailable(self, e: BaseException, what: str) -> StateUnavailable:
        return StateUnavailable(
            f"{self._where} cannot be reached: {what}",
            reasons=[f"{self._where} cannot be reached ({type(e).__name__}): {what}"],
        )

    async def note(self, upstream: str, digests: Sequence[bytes]) -> None:
        """``upstream`` handed out the URIs of ``digests`` (now)."""
        key = PREFIX + upstream
        now = time.time() * 1000
        try:
            async with self._r.pipeline(transaction=True) as p:
                p.zadd(key, dict.fromkeys(digests, now))
                p.zremrangebyrank(key, 0, -self._per_upstream - 1)
                p.pexpire(key, RETAIN_MS)
                await p.execute()
        except (RedisError, OSError) as e:
            raise self._unavailable(e, "a result that hands out links is refused") from e

    async def claimants(self, digest: bytes, upstreams: Iterable[str]) -> set[str]:
        """Which of ``upstreams`` handed out the URI of ``digest`` (through any replica)."""
        names = list(upstreams)
        if not names:
            return set()
        try:
            async with self._r.pipeline(transaction=False) as p:
                for name in names:
                    p.zscore(PREFIX + name, digest)
                scores = await p.execute()
        except (RedisError, OSError) as e:
            raise self._unavailable(
                e, "who handed out the URI cannot be known, so the read is refused"
            ) from e
        return {name for name, score in zip(names, scores, strict=True) if score is not None}

    async def aclose(self) -> None:
        await self._r.aclose()
