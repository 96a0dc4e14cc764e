"""The embedded backend: in-process wake-ups over a durable SQLite store (WAL) in the data dir.

``<data_dir>/bus.db`` (mode 0600) holds the messages (ciphertext only), the replay window,
the topic subscriptions, the public key directory and the counters. A message is committed
before ``enqueue`` returns, so an accepted message survives a crash of the gateway (WAL with
``synchronous=NORMAL``: a killed process loses nothing committed; an OS crash may lose the
last commits). Settled messages stay for the retention window, for ``symbi bus verify``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from gateway.bus.backend import COUNTERS, Outcome, Pending, StoredMessage
from gateway.bus.counts import Caps, Counts, LocalCounts
from gateway.bus.crypto import PublicKeys
from gateway.bus.message import SecureMessage
from gateway.errors import BusBufferFull, BusUnavailable
from gateway.sqlitetx import open_readonly, write_transaction

POLL_S = 0.25  # how often a waiting receiver looks for messages sent by another process
STATES = {"pending": 0, "delivered": 1, "rejected": 2, "expired": 3}
STATE_NAMES = {v: k for k, v in STATES.items()}

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    inbox TEXT NOT NULL, id TEXT NOT NULL, expires_ms INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    h BLOB NOT NULL, n BLOB NOT NULL, c BLOB NOT NULL, s BLOB NOT NULL,
    state INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS messages_inbox ON messages(inbox, state, seq);
CREATE TABLE IF NOT EXISTS seen(agent TEXT NOT NULL, id TEXT NOT NULL, until_ms INTEGER NOT NULL,
    PRIMARY KEY(agent, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subs(agent TEXT NOT NULL, pattern TEXT NOT NULL,
    until_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(agent, pattern));
CREATE TABLE IF NOT EXISTS keys(agent TEXT PRIMARY KEY, principal TEXT NOT NULL, sign_pub BLOB NOT NULL,
    dh_pub BLOB NOT NULL, mac BLOB NOT NULL, name TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS keys_name ON keys(name);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def open_db(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        return open_readonly(path, isolation_level=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(SCHEMA)
    if not _subs_expire(db):
        # a store written before subscriptions expired: those it holds are expired (0), so
        # none lives on without a lifetime; an agent subscribes again (the policy asked again)
        db.execute("ALTER TABLE subs ADD COLUMN until_ms INTEGER NOT NULL DEFAULT 0")
    # (a store of session 42 has a made_ms column, read by nothing now: its default fills it)
    return db


def _subs_expire(db: sqlite3.Connection) -> bool:
    """Whether the store's subscriptions carry their expiry (``until_ms``): one written before
    they did lacks it (``open_db`` adds it; a read-only reader sees the store as it is)."""
    return "until_ms" in _columns(db, "subs")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._arrivals: dict[str, anyio.Event] = {}
        self._pending: dict[str, int] = {}  # inbox -> pending entries (counted once, then kept)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BusUnavailable("the bus store is closed")
        return self._db

    async def start(self) -> None:
        self._db = open_db(self.path)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- keys ------------------------------------------------------------------------------

    async def publish_keys(self, entry: PublicKeys) -> None:
        with write_transaction(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO keys(agent, principal, sign_pub, dh_pub, mac, name) "
                "VALUES (?,?,?,?,?,?)",
                (entry.agent, entry.principal, entry.sign_pub, entry.dh_pub, entry.mac, entry.name),
            )

    async def lookup_keys(self, agent: str) -> PublicKeys | None:
        return lookup_keys_db(self.db, agent)

    async def lookup_keys_many(self, agents: list[str]) -> dict[str, PublicKeys]:
        found = ((a, lookup_keys_db(self.db, a)) for a in agents)  # (in-process: no round trip)
        return {a: e for a, e in found if e is not None}

    async def forget_agent(self, agent: str, inboxes: tuple[str, ...], name: str = "") -> None:
        del name  # the row holds it
        # one transaction: a crash between the entry and the subscriptions left a
        # half-forgotten agent (and it saves a commit per ended session)
        with write_transaction(self.db):
            self.db.execute("DELETE FROM keys WHERE agent=?", (agent,))
            self._leave_rows(agent, inboxes)
        self._left(inboxes)

    async def leave(self, agent: str, inboxes: tuple[str, ...]) -> None:
        with write_transaction(self.db):
            self._leave_rows(agent, inboxes)
        self._left(inboxes)

    def _leave_rows(self, agent: str, inboxes: tuple[str, ...]) -> None:
        """Its subscriptions go and what waits in its inboxes expires (inside a transaction)."""
        self.db.execute("DELETE FROM subs WHERE agent=?", (agent,))
        marks = ",".join("?" * len(inboxes))
        cur = self.db.execute(f"UPDATE messages SET state=3 WHERE state=0 AND inbox IN ({marks})", inboxes)
        if cur.rowcount:
            _bump(self.db, "expired", cur.rowcount)

    def _left(self, inboxes: tuple[str, ...]) -> None:
        for inbox in inboxes:
            self._pending.pop(inbox, None)
            self._wake(inbox)  # a receive still waiting returns (empty)

    def footprint(self) -> dict[str, int]:
        (keys,) = self.db.execute("SELECT count(*) FROM keys").fetchone()
        # (the pending counts per inbox are a cache the expiry sweep empties: not counted)
        return {"bus_directory": int(keys), "bus_wakeups": len(self._arrivals)}

    def counts(self, caps: Caps) -> Counts:
        return LocalCounts(self, caps)  # one gateway process per data dir: counted in it

    async def lookup_name(self, name: str) -> str | None:
        row = self.db.execute(
            "SELECT agent FROM keys WHERE name=? AND name != '' ORDER BY rowid DESC LIMIT 1", (name,)
        ).fetchone()
        return str(row[0]) if row else None

    # -- inboxes ---------------------------------------------------------------------------

    async def enqueue(self, inbox: str, msg: SecureMessage, limit: int) -> None:
        db = self.db
        f = msg.to_fields()
        n = await self.pending_count(inbox)
        db.execute("BEGIN IMMEDIATE")
        try:
            if n >= limit:
                raise BusBufferFull(
                    f"the inbox of {inbox} is full ({n} messages waiting, runtime.message_buffer_size = {limit}); "
                    "the message was not accepted"
                )
            db.execute(
                "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
                (inbox, msg.id, msg.expires_ms, msg.timestamp_ms, f["h"], f["n"], f["c"], f["s"]),
            )
            _bump(db, "sent", 1)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._pending[inbox] = n + 1
        self._wake(inbox)

    def _wake(self, inbox: str) -> None:
        ev = self._arrivals.pop(inbox, None)
        if ev is not None:
            ev.set()

    async def fetch(self, inbox: str, max_items: int, wait_s: float) -> list[Pending]:
        with anyio.move_on_after(max(wait_s, 0)):
            while True:
                rows = self.db.execute(
                    "SELECT seq, h, n, c, s FROM messages WHERE inbox=? AND state=0 ORDER BY seq LIMIT ?",
                    (inbox, max_items),
                ).fetchall()
                if rows or wait_s <= 0:
                    return [_pending(r) for r in rows]
                await self._wait(inbox)
        return []

    async def _wait(self, inbox: str) -> None:
        # woken at once by a send in this process; another process on the same data dir is
        # seen by polling
        with anyio.move_on_after(POLL_S):
            await self._arrival(inbox).wait()

    def _arrival(self, inbox: str) -> anyio.Event:
        ev = self._arrivals.get(inbox)
        if ev is None:
            ev = self._arrivals[inbox] = anyio.Event()
        return ev

    async def wait_arrival(
        self, inbox: str, timeout_s: float, cursor: Any
    ) -> tuple[Any, list[SecureMessage | None]]:
        if cursor is None:
            (cursor,) = self.db.execute(
                "SELECT coalesce(max(seq), 0) FROM messages WHERE inbox=?", (inbox,)
            ).fetchone()
        with anyio.move_on_after(timeout_s):
            while True:
                rows = self.db.execute(
                    "SELECT seq, h, n, c, s FROM messages WHERE inbox=? AND seq>? ORDER BY seq",
                    (inbox, cursor),
                ).fetchall()
                if rows:
                    return rows[-1][0], [_pending(r).msg for r in rows]
                await self._wait(inbox)
        return cursor, []

    async def settle(self, inbox: str, outcomes: list[tuple[str, Outcome]]) -> None:
        if not outcomes:
            return
        with write_transaction(self.db):
            before = self.db.total_changes
            self.db.executemany(
                "UPDATE messages SET state=? WHERE seq=? AND inbox=? AND state=0",
                [(STATES[o], int(ref), inbox) for ref, o in outcomes],
            )
            settled = self.db.total_changes - before
            for o in {o for _, o in outcomes}:
                _bump(self.db, o, sum(1 for _, x in outcomes if x == o))
        if inbox in self._pending:
            self._pending[inbox] = max(self._pending[inbox] - settled, 0)

    async def pending_count(self, inbox: str) -> int:
        n = self._pending.get(inbox)
        if n is None:
            (n,) = self.db.execute(
                "SELECT count(*) FROM messages WHERE inbox=? AND state=0", (inbox,)
            ).fetchone()
            self._pending[inbox] = n = int(n)
        return n

    # -- replay window ---------------------------------------------------------------------

    async def first_seen(self, agent: str, items: list[tuple[str, int]]) -> set[str]:
        fresh: set[str] = set()
        if not items:
            return fresh
        with write_transaction(self.db):
            for msg_id, until_ms in items:
                cur = self.db.execute("INSERT OR IGNORE INTO seen VALUES (?,?,?)", (agent, msg_id, until_ms))
                if cur.rowcount == 1:
                    fresh.add(msg_id)
        return fresh

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, agent: str, pattern: str, until_ms: int) -> None:
        with write_transaction(self.db):
            self.db.execute(
                "INSERT INTO subs(agent, pattern, until_ms) VALUES (?,?,?) "
                "ON CONFLICT(agent, pattern) DO UPDATE SET until_ms = excluded.until_ms",
                (agent, pattern, until_ms),
            )

    async def unsubscribe(self, agent: str, pattern: str) -> bool:
        with write_transaction(self.db):
            cur = self.db.execute("DELETE FROM subs WHERE agent=? AND pattern=?", (agent, pattern))
        return cur.rowcount > 0

    async def unsubscribe_parked(self, agents: list[str]) -> list[str]:
        # all of theirs: one transaction, so every one it sees was made before it (one process)
        with write_transaction(self.db):
            self.db.executemany("DELETE FROM subs WHERE agent=?", [(a,) for a in agents])
        return []  # (one gateway process per data dir: none is live elsewhere)

    async def hold(self, agent: str) -> None:
        del agent  # one gateway process per data dir

    async def subscriptions(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        now = int(time.time() * 1000)
        for agent, pattern in self.db.execute("SELECT agent, pattern FROM subs WHERE until_ms > ?", (now,)):
            out.setdefault(agent, set()).add(pattern)
        return out

    async def subscriptions_of(self, agent: str) -> set[str]:
        now = int(time.time() * 1000)
        rows = self.db.execute("SELECT pattern FROM subs WHERE agent=? AND until_ms > ?", (agent, now))
        return {str(p) for (p,) in rows}

    # -- housekeeping ----------------------------------------------------------------------

    async def expire(self, now_ms: int, retain_ms: int) -> int:
        with write_transaction(self.db):
            cur = self.db.execute("UPDATE messages SET state=3 WHERE state=0 AND expires_ms < ?", (now_ms,))
            n = cur.rowcount
            self._pending.clear()  # counted again on next use
            if n:
                _bump(self.db, "expired", n)
            self.db.execute("DELETE FROM messages WHERE state != 0 AND ts_ms < ?", (now_ms - retain_ms,))
            self.db.execute("DELETE FROM seen WHERE until_ms < ?", (now_ms,))
            self.db.execute("DELETE FROM subs WHERE until_ms <= ?", (now_ms,))
        return n

    async def bump(self, counter: str, n: int = 1) -> None:
        with write_transaction(self.db):
            _bump(self.db, counter, n)

    async def stats(self) -> dict[str, object]:
        return stats_of(self.db)


def lookup_keys_db(db: sqlite3.Connection, agent: str) -> PublicKeys | None:
    row = db.execute(
        "SELECT agent, principal, sign_pub, dh_pub, mac, name FROM keys WHERE agent=?", (agent,)
    ).fetchone()
    return PublicKeys(*row) if row else None


def stats_of(db: sqlite3.Connection) -> dict[str, object]:
    counters = {name: 0 for name in COUNTERS}
    counters.update({k: int(v) for k, v in db.execute("SELECT name, n FROM counters")})
    inboxes = {
        k: int(v)
        for k, v in db.execute(
            "SELECT inbox, count(*) FROM messages WHERE state=0 GROUP BY inbox ORDER BY inbox"
        )
    }
    stored = {
        STATE_NAMES.get(s, str(s)): int(n)
        for s, n in db.execute("SELECT state, count(*) FROM messages GROUP BY state")
    }
    (subs,) = db.execute(
        "SELECT count(*) FROM subs WHERE until_ms > ?"
        if _subs_expire(db)
        else "SELECT count(*) FROM subs WHERE 0 > ?",  # (read-only, written before they expired)
        (int(time.time() * 1000),),
    ).fetchone()
    (agents,) = db.execute("SELECT count(*) FROM keys").fetchone()
    return {
        "backend": "embedded",
        "counters": counters,
        "pending_by_inbox": inboxes,
        "stored": stored,
        "subscriptions": int(subs),
        "agents": int(agents),
    }


def scan_db(db: sqlite3.Connection) -> Iterator[StoredMessage]:
    for inbox, state, h, n, c, s in db.execute(
        "SELECT inbox, state, h, n, c, s FROM messages ORDER BY inbox, seq"
    ):
        try:
            msg: SecureMessage | None = SecureMessage.from_fields({"h": h, "n": n, "c": c, "s": s})
            err = None
        except ValueError as e:
            msg, err = None, str(e)
        yield StoredMessage(inbox, STATE_NAMES.get(state, str(state)), msg, err)


def _pending(row: tuple[int, bytes, bytes, bytes, bytes]) -> Pending:
    seq, h, n, c, s = row
    try:
        return Pending(str(seq), SecureMessage.from_fields({"h": h, "n": n, "c": c, "s": s}))
    except ValueError as e:
        return Pending(str(seq), None, str(e))


def _bump(db: sqlite3.Connection, name: str, n: int) -> None:
    db.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET n = n + excluded.n", (name, n)
    )
