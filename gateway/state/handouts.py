"""The hand-outs (``gateway.handouts``) kept beyond the process: every replica's in Redis, or
one gateway's in its data dir (``SqliteHandOuts``), so a restart does not forget them either.

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

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.custody import PRIVATE_DIR
from gateway.errors import StateUnavailable
from gateway.sqlitetx import write_transaction
from gateway.state.health import safe_url
from gateway.state.redisclient import RedisUser

_logger = logging.getLogger("symbi.state")

PREFIX = "symbi:ho:"
RETAIN_MS = 7 * 24 * 3600 * 1000  # an upstream that hands out nothing for a week: its set goes
TRIM_EVERY = 64  # the data dir's store is cut to its bound at the first note and every 64th after


class RedisHandOuts(RedisUser):
    """The replicas' shared hand-outs (``HandedOut.shared``)."""

    def __init__(
        self, url: str, *, timeout_s: float, per_upstream: int, client: aioredis.Redis | None = None
    ) -> None:
        super().__init__(url, timeout_s, client)  # ``client``: the process's one (``build_state``)
        # said to callers refused while it fails: never where it is (the operator's, logged)
        self._where = "the replicas' hand-outs (Redis)"
        self._at = safe_url(url)
        self._per_upstream = per_upstream

    def _unavailable(self, e: BaseException, what: str) -> StateUnavailable:
        _logger.debug("%s at %s cannot be used: %s (%r)", self._where, self._at, what, e)  # per call
        return StateUnavailable(
            f"{self._where} cannot be used: {what}",  # down, or refusing (a Redis ACL: NOPERM)
            reasons=[f"{self._where} cannot be used ({type(e).__name__}): {what}"],
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


class SqliteHandOuts:
    """One gateway's hand-outs in its data dir (``handouts.db``): a link handed out before a
    restart is still its upstream's claim after it (the newest ``per_upstream`` of each, give or
    take ``TRIM_EVERY`` notes). Opened at the first hand-out or lookup; a commit is not synced
    (WAL, ``synchronous=NORMAL``): a power cut may forget the last ones, never corrupt the
    rest. A store that cannot be read or written is ``StateUnavailable``, as Redis is."""

    def __init__(self, path: Path, *, per_upstream: int) -> None:
        self.path = path
        self._per_upstream = per_upstream
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._notes: dict[str, int] = {}  # hand-outs noted per upstream by this process

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS handouts (upstream TEXT NOT NULL, digest BLOB NOT NULL,"
                " at INTEGER NOT NULL, PRIMARY KEY (upstream, digest)) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS handouts_by_digest ON handouts (digest)")
            db.execute("CREATE INDEX IF NOT EXISTS handouts_by_age ON handouts (upstream, at)")
            self._db = db
        return self._db

    def _unavailable(self, e: BaseException, what: str) -> StateUnavailable:
        # said to callers: not the data dir's path nor SQLite's text (the operator's, logged:
        # a local file that fails is rare)
        _logger.warning("the hand-out store %s cannot be used: %s (%r)", self.path, what, e)
        where = "the hand-out store (in the data dir)"
        return StateUnavailable(
            f"{where} cannot be used: {what}", reasons=[f"{where} ({type(e).__name__}): {what}"]
        )

    async def note(self, upstream: str, digests: Sequence[bytes]) -> None:
        now = time.time_ns()
        try:
            with self._lock:
                db = self._open()
                with write_transaction(db):
                    db.executemany(
                        "INSERT OR REPLACE INTO handouts (upstream, digest, at) VALUES (?, ?, ?)",
                        [(upstream, d, now + i) for i, d in enumerate(digests)],
                    )
                    # the newest per_upstream of this upstream stay (as in the process's memory),
                    # cut every TRIM_EVERY notes of it: the cut walks the upstream's index
                    self._notes[upstream] = n = self._notes.get(upstream, 0) + 1
                    if (n - 1) % TRIM_EVERY == 0:
                        db.execute(
                            "DELETE FROM handouts WHERE upstream = ? AND at < (SELECT at FROM handouts"
                            " WHERE upstream = ? ORDER BY at DESC LIMIT 1 OFFSET ?)",
                            (upstream, upstream, self._per_upstream - 1),
                        )
        except (sqlite3.Error, OSError) as e:  # the data dir's file or its folder
            raise self._unavailable(e, "a result that hands out links is refused") from e

    async def claimants(self, digest: bytes, upstreams: Iterable[str]) -> set[str]:
        names = set(upstreams)
        try:
            with self._lock:
                rows = self._open().execute("SELECT upstream FROM handouts WHERE digest = ?", (digest,))
                return {r[0] for r in rows if r[0] in names}
        except (sqlite3.Error, OSError) as e:  # the data dir's file or its folder
            raise self._unavailable(
                e, "who handed out the URI cannot be known, so the read is refused"
            ) from e

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
