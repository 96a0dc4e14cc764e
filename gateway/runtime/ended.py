"""Sessions an operator terminated, kept in the data dir so a restart does not bring them back.

Only sessions that can recur need it: a stateless (2026-era) client's session is its
credential (``key:<id>``, ``jwt:...``), the same after a restart, so without this file a
terminated agent would return with the next process. Handshake-era HTTP sessions (``http:``)
never recur and stdio is one client per process: those are kept in memory only.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.sqlitetx import open_durable, write_transaction

SessionKey = tuple[str, str, str]  # (qualified principal, client label, session key)


class EndedSessions:
    """SQLite file of ``(owner, client, session) -> reason``; the newest ``limit`` are kept."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_durable(
            path,
            "CREATE TABLE IF NOT EXISTS ended (owner TEXT NOT NULL, client TEXT NOT NULL,"
            " session TEXT NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (owner, client, session))",
        )

    def load(self, limit: int) -> list[tuple[SessionKey, str]]:
        """The newest ``limit`` ended sessions, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT owner, client, session, reason FROM ended ORDER BY at DESC, rowid DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [((o, c, s), r) for o, c, s, r in reversed(rows)]

    def add(self, key: SessionKey, reason: str, limit: int) -> None:
        with self._lock, write_transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO ended (owner, client, session, reason, at) VALUES (?,?,?,?,?)",
                (*key, reason, time.time()),
            )
            self._db.execute(
                "DELETE FROM ended WHERE rowid NOT IN"
                " (SELECT rowid FROM ended ORDER BY at DESC, rowid DESC LIMIT ?)",
                (limit,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()
