"""The gateway's record of every upstream tool: approved vs current definition, and state.

SQLite (WAL) in the data dir, shared by a running gateway (which writes what it sees on
every refresh) and the ``symbi tools`` CLI (which reads it and records approvals and
revocations), so the security team works on a running or a stopped gateway alike.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import AmbiguousTool
from gateway.sqlitetx import write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tools (
    upstream TEXT NOT NULL,
    name TEXT NOT NULL,              -- the upstream's own tool name
    namespaced TEXT NOT NULL,
    current_hash TEXT,
    current_definition TEXT,
    approved_hash TEXT,              -- the definition a person (or TOFU) approved
    approved_definition TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    key_fingerprint TEXT,
    revoked INTEGER NOT NULL DEFAULT 0,
    present INTEGER NOT NULL DEFAULT 1,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    changed_at REAL,
    PRIMARY KEY (upstream, name)
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""


@dataclass(frozen=True)
class ToolRecord:
    upstream: str
    name: str
    namespaced: str
    current_hash: str | None
    current_definition: dict[str, Any] | None
    approved_hash: str | None
    approved_definition: dict[str, Any] | None
    status: str
    reason: str | None
    key_fingerprint: str | None
    revoked: bool
    present: bool
    first_seen: float
    last_seen: float
    changed_at: float | None

    @property
    def drifted(self) -> bool:
        return self.approved_hash is not None and self.current_hash != self.approved_hash

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.namespaced,
            "upstream": self.upstream,
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "key_fingerprint": self.key_fingerprint,
            "definition_hash": self.current_hash,
            "approved_hash": self.approved_hash,
            "drifted": self.drifted,
            "revoked": self.revoked,
            "present": self.present,
        }


@dataclass(frozen=True)
class _Sighting:
    """One tool as ``ToolStateStore.observe`` writes it (``text``: its definition's JSON)."""

    upstream: str
    name: str
    namespaced: str
    definition_hash: str
    text: str
    status: str
    reason: str | None
    key_fingerprint: str | None
    now: float


class ToolStates(Protocol):
    """Where tool records, approvals and revocations live: ``ToolStateStore`` (SQLite, one
    gateway) or ``gateway.state.postgres.PgToolStateStore`` (shared by replicas)."""

    path: Any  # where, for messages

    def close(self) -> None: ...
    def version(self) -> str: ...
    def get(self, upstream: str, name: str) -> ToolRecord | None: ...
    def find(self, namespaced: str) -> ToolRecord | None: ...
    def all(self) -> list[ToolRecord]: ...
    def observe(
        self,
        upstream: str,
        name: str,
        namespaced: str,
        definition: dict[str, Any],
        definition_hash: str,
        *,
        status: str,
        reason: str | None,
        key_fingerprint: str | None,
        pin_if_new: bool,
    ) -> tuple[ToolRecord | None, ToolRecord]: ...
    def has_approved(self, upstream: str) -> bool: ...
    def mark_absent(self, upstream: str, present_names: set[str]) -> list[ToolRecord]: ...
    def approve(self, upstream: str, name: str, definition_hash: str, definition: dict[str, Any]) -> None: ...
    def revoke(self, upstream: str, name: str) -> None: ...
    def revoked(self) -> set[tuple[str, str]]: ...


class ToolStateStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data dir: private
        new = not path.exists()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        if new:
            os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self.path = path

    def close(self) -> None:
        self._db.close()

    def version(self) -> str:
        """Changes whenever the CLI approves or revokes (the gateway polls it)."""
        row = self._db.execute("SELECT v FROM meta WHERE k='approvals'").fetchone()
        return row[0] if row else "0"

    def _bump(self) -> None:
        self._db.execute(
            "INSERT INTO meta (k, v) VALUES ('approvals', ?) ON CONFLICT(k) DO UPDATE SET v=excluded.v",
            (str(time.time_ns()),),
        )

    def get(self, upstream: str, name: str) -> ToolRecord | None:
        with self._lock:
            row = self._select(upstream, name)
        return record_from_row(row) if row else None

    def find(self, namespaced: str) -> ToolRecord | None:
        """The tool ``namespaced`` names now (``one_named``); None if never seen."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM tools WHERE namespaced=? ORDER BY name", (namespaced,)
            ).fetchall()
        return one_named(namespaced, [record_from_row(r) for r in rows])

    def all(self) -> list[ToolRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tools ORDER BY upstream, name").fetchall()
        return [record_from_row(r) for r in rows]

    def observe(
        self,
        upstream: str,
        name: str,
        namespaced: str,
        definition: dict[str, Any],
        definition_hash: str,
        *,
        status: str,
        reason: str | None,
        key_fingerprint: str | None,
        pin_if_new: bool,
    ) -> tuple[ToolRecord | None, ToolRecord]:
        """Record what the gateway sees now; returns (before, after)."""
        text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
        seen = _Sighting(
            upstream, name, namespaced, definition_hash, text, status, reason, key_fingerprint, time.time()
        )
        # one write transaction: gateways sharing the data dir (stdio clients each start one)
        # pin first use once; the loser sees the winner's row and compares against it
        with self._lock, write_transaction(self._db):
            row = self._select(upstream, name)
            before = record_from_row(row) if row else None
            if before is None:
                self._insert_first(seen, pin_if_new)
            else:
                self._update_seen(seen, before, pin_if_new)
            after = record_from_row(self._select(upstream, name))
        return before, after

    def _select(self, upstream: str, name: str) -> Any:
        """The tool's row, or None (the caller holds the lock)."""
        return self._db.execute(
            "SELECT * FROM tools WHERE upstream=? AND name=?", (upstream, name)
        ).fetchone()

    def _insert_first(self, seen: _Sighting, pin_if_new: bool) -> None:
        """A tool seen for the first time; its definition is the approved one if pinned now."""
        approved = (seen.definition_hash, seen.text) if pin_if_new else (None, None)
        self._db.execute(
            "INSERT INTO tools (upstream, name, namespaced, current_hash, current_definition, approved_hash,"
            " approved_definition, status, reason, key_fingerprint, first_seen, last_seen, changed_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,NULL)",
            (
                seen.upstream,
                seen.name,
                seen.namespaced,
                seen.definition_hash,
                seen.text,
                *approved,
                seen.status,
                seen.reason,
                seen.key_fingerprint,
                seen.now,
                seen.now,
            ),
        )

    def _update_seen(self, seen: _Sighting, before: ToolRecord, pin_if_new: bool) -> None:
        """A known tool seen again: an approval it has is kept, a missing one pinned if asked."""
        changed = before.current_hash != seen.definition_hash
        approved_hash = before.approved_hash
        approved_def = (
            json.dumps(before.approved_definition, sort_keys=True) if before.approved_definition else None
        )
        if approved_hash is None and pin_if_new:
            approved_hash, approved_def = seen.definition_hash, seen.text
        self._db.execute(
            "UPDATE tools SET namespaced=?, current_hash=?, current_definition=?, approved_hash=?,"
            " approved_definition=?, status=?, reason=?, key_fingerprint=?, present=1, last_seen=?,"
            " changed_at=CASE WHEN ? THEN ? ELSE changed_at END WHERE upstream=? AND name=?",
            (
                seen.namespaced,
                seen.definition_hash,
                seen.text,
                approved_hash,
                approved_def,
                seen.status,
                seen.reason,
                seen.key_fingerprint,
                seen.now,
                changed,
                seen.now,
                seen.upstream,
                seen.name,
            ),
        )

    def has_approved(self, upstream: str) -> bool:
        """Whether any tool of ``upstream`` was ever approved (pinned, signed or by a person)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM tools WHERE upstream=? AND approved_hash IS NOT NULL LIMIT 1", (upstream,)
            ).fetchone()
        return row is not None

    def mark_absent(self, upstream: str, present_names: set[str]) -> list[ToolRecord]:
        """Tools of ``upstream`` that vanished from its listing; returns them."""
        gone = []
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM tools WHERE upstream=? AND present=1", (upstream,)
            ).fetchall()
            for r in rows:
                rec = record_from_row(r)
                if rec.name not in present_names:
                    self._db.execute(
                        "UPDATE tools SET present=0, changed_at=? WHERE upstream=? AND name=?",
                        (time.time(), upstream, rec.name),
                    )
                    gone.append(rec)
        return gone

    def approve(self, upstream: str, name: str, definition_hash: str, definition: dict[str, Any]) -> None:
        text = json.dumps(definition, sort_keys=True, ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "UPDATE tools SET approved_hash=?, approved_definition=?, revoked=0 WHERE upstream=? AND name=?",
                (definition_hash, text, upstream, name),
            )
            self._bump()

    def revoke(self, upstream: str, name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE tools SET revoked=1 WHERE upstream=? AND name=?", (upstream, name))
            self._bump()

    def revoked(self) -> set[tuple[str, str]]:
        """(upstream, name) of every revoked tool (``Revocations``: checked at every call)."""
        with self._lock:
            rows = self._db.execute("SELECT upstream, name FROM tools WHERE revoked=1").fetchall()
        return {(up, name) for up, name in rows}


def one_named(namespaced: str, recs: list[ToolRecord]) -> ToolRecord | None:
    """The record a namespaced name means now. An upstream that renames a tool onto the same
    namespaced name (``rm_all`` to ``rm all``: both ``evil__rm_all``) leaves two rows; the one
    its current listing offers is meant, never the old one by row order. Two offered, or several
    none offered, cannot be told apart: refused, naming them."""
    if len(recs) <= 1:
        return recs[0] if recs else None
    present = [r for r in recs if r.present]
    if len(present) == 1:
        return present[0]
    names = ", ".join(repr(r.name) for r in recs)
    raise AmbiguousTool(
        f"{namespaced} names {len(recs)} tools of upstream {recs[0].upstream!r} ({names}), "
        f"{len(present)} of them in its current listing: not acting on a guess"
    )


def record_from_row(row: Any) -> ToolRecord:
    """A record from the 15 columns in table order (SQLite here, PostgreSQL in gateway.state)."""
    (up, name, ns, ch, cd, ah, ad, status, reason, fp, revoked, present, first, last, changed) = row
    return ToolRecord(
        upstream=up,
        name=name,
        namespaced=ns,
        current_hash=ch,
        current_definition=json.loads(cd) if cd else None,
        approved_hash=ah,
        approved_definition=json.loads(ad) if ad else None,
        status=status,
        reason=reason,
        key_fingerprint=fp,
        revoked=bool(revoked),
        present=bool(present),
        first_seen=first,
        last_seen=last,
        changed_at=changed,
    )
