"""TOFU pin store: SQLite, one row per (domain, tool id), file mode 0600.

Each pin records the key fingerprint and the hash of the canonical definition that was
verified, so both a new key (rug pull by key swap) and a new definition under the same key
(rug pull by re-signing) are caught. A pin is only ever written after a signature verified.
Changes are never applied automatically: they are recorded as *pending* and applied by an
explicit :meth:`PinStore.approve` (or turned down by :meth:`PinStore.reject`), and every
change is written to ``pin_events`` as a :class:`PinEvent`. A rejected change is remembered on
the pin: presented again, it is refused without being queued for review again.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol, Self

from ._domain import normalize_domain
from ._errors import PinStoreError
from ._pinrules import (
    _REJECTED_COLS,
    LAST_SEEN_RESOLUTION_S,
    PIN_COLS,
    Pin,
    PinEvent,
    PinStatus,
    PinWrites,
    _age_s,
    _named,
    _now,
    _pending_is,
    history_query,
    moves,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pins (
    domain TEXT NOT NULL,
    tool_id TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    definition_hash TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    pending_fingerprint TEXT,
    pending_definition_hash TEXT,
    pending_since TEXT,
    rejected_fingerprint TEXT,
    rejected_definition_hash TEXT,
    rejected_at TEXT,
    rejected_seen TEXT,
    PRIMARY KEY (domain, tool_id)
);
CREATE TABLE IF NOT EXISTS pin_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    domain TEXT NOT NULL,
    tool_id TEXT NOT NULL,
    action TEXT NOT NULL,
    old_fingerprint TEXT,
    new_fingerprint TEXT,
    old_definition_hash TEXT,
    new_definition_hash TEXT,
    actor TEXT
);
"""
_WRITES = PinWrites.of("pins", "?")


class Pins(Protocol):
    """What a verification needs of a pin store (``PinStore``, or a shared one elsewhere)."""

    def check_and_pin(
        self, domain: str, tool_id: str, key_fingerprint: str, definition_hash: str
    ) -> tuple[PinStatus, Pin]: ...


class PinStore:
    """A persistent, locked TOFU pin store (SQLite). Safe to share between threads and processes.

    Args:
        path: the database file; created with mode 0600 (parent directory 0700 if created).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)  # also tightens a file made by something else
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.executescript(_SCHEMA)
            _upgrade(self._db)
        except (OSError, sqlite3.Error) as e:
            raise PinStoreError(f"cannot open pin store {self.path}: {e}", path=str(self.path)) from None
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> _Tx:
        return _Tx(self)

    @staticmethod
    def _row(row: tuple[Any, ...] | None) -> Pin | None:
        return Pin(*row) if row else None

    def _get(self, domain: str, tool_id: str) -> Pin | None:
        cur = self._db.execute(f"SELECT {PIN_COLS} FROM pins WHERE domain=? AND tool_id=?", (domain, tool_id))
        return self._row(cur.fetchone())

    def _event(
        self,
        domain: str,
        tool_id: str,
        action: PinEvent,
        old: Pin | None,
        new_fp: str | None,
        new_hash: str | None,
        actor: str | None,
    ) -> None:
        self._db.execute(
            "INSERT INTO pin_events (at, domain, tool_id, action, old_fingerprint, new_fingerprint, "
            "old_definition_hash, new_definition_hash, actor) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                _now(),
                domain,
                tool_id,
                action.value,
                old.key_fingerprint if old else None,
                new_fp,
                old.definition_hash if old else None,
                new_hash,
                actor,
            ),
        )

    # -- the TOFU decision -----------------------------------------------------------------

    def check_and_pin(
        self, domain: str, tool_id: str, key_fingerprint: str, definition_hash: str
    ) -> tuple[PinStatus, Pin]:
        """Compare a *verified* (key, definition) with the pin; pin it on first use.

        Call only after the signature verified. On a change nothing is re-pinned: the new
        values are stored as pending (for ``approve``) and the old pin is returned.
        """
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        if not tool_id:
            raise ValueError("tool_id is required")
        # Fast path, no write: a matching pin whose last_seen is fresh enough. Saves an fsync
        # per verification; last_seen is then accurate to LAST_SEEN_RESOLUTION_S.
        with self._lock:
            try:
                pin = self._get(dom, tool_id)
            except sqlite3.Error as e:
                raise PinStoreError(f"pin store read failed: {e}") from None
        if (
            pin is not None
            and pin.key_fingerprint == fp
            and pin.definition_hash == h
            and _age_s(pin.last_seen) < LAST_SEEN_RESOLUTION_S
        ):
            return PinStatus.PINNED, pin
        with self._tx():
            pin = self._get(dom, tool_id)
            now = _now()
            if pin is None:
                self._db.execute(
                    "INSERT INTO pins (domain, tool_id, key_fingerprint, definition_hash, first_seen, last_seen) "
                    "VALUES (?,?,?,?,?,?)",
                    (dom, tool_id, fp, h, now, now),
                )
                self._event(dom, tool_id, PinEvent.FIRST_USE, None, fp, h, "tofu")
                new = self._get(dom, tool_id)
                assert new is not None
                return PinStatus.FIRST_USE, new
            if pin.key_fingerprint == fp and pin.definition_hash == h:
                self._db.execute(
                    "UPDATE pins SET last_seen=? WHERE domain=? AND tool_id=?", (now, dom, tool_id)
                )
                new = self._get(dom, tool_id)
                assert new is not None
                return PinStatus.PINNED, new
            return self._hold(pin, fp, h, now), pin

    def _hold(self, pin: Pin, fp: str, h: str, now: str) -> PinStatus:
        """Write what ``hold`` decides for the change ``(fp, h)`` (inside the transaction)."""
        status, event = _WRITES.hold(self._db.execute, pin, fp, h, now)
        if event is not None:
            self._event(pin.domain, pin.tool_id, event, pin, fp, h, None)
        return status

    # -- inspection and explicit changes ---------------------------------------------------

    def get(self, domain: str, tool_id: str) -> Pin | None:
        """The pin for (domain, tool id), or ``None``."""
        with self._lock:
            try:
                return self._get(normalize_domain(domain), tool_id)
            except sqlite3.Error as e:
                raise PinStoreError(f"pin store read failed: {e}") from None

    def pins(self, domain: str | None = None) -> list[Pin]:
        """All pins (of one domain), ordered by domain and tool id."""
        sql = f"SELECT {PIN_COLS} FROM pins"
        args: tuple[str, ...] = ()
        if domain is not None:
            sql += " WHERE domain=?"
            args = (normalize_domain(domain),)
        with self._lock:
            try:
                rows = self._db.execute(sql + " ORDER BY domain, tool_id", args).fetchall()
            except sqlite3.Error as e:
                raise PinStoreError(f"pin store read failed: {e}") from None
        return [Pin(*r) for r in rows]

    def approve(
        self,
        domain: str,
        tool_id: str,
        *,
        key_fingerprint: str,
        definition_hash: str,
        actor: str | None = None,
    ) -> Pin:
        """Explicitly (re-)pin a tool to the given key fingerprint and definition hash, clearing
        any pending change (and the rejected one when the pin moves: ``moves``). Approving the
        rejected change is allowed: the person names it, having changed their mind.

        This is the only way a pinned key or definition changes. Both values are required:
        the caller names what it reviewed, and the store never fills one in with whatever is
        pending when the write happens (it can have been swapped since the review).
        """
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        with self._tx():
            pin = self._get(dom, tool_id)
            now = _now()
            if pin is None:
                self._db.execute(
                    "INSERT INTO pins (domain, tool_id, key_fingerprint, definition_hash, first_seen, last_seen) "
                    "VALUES (?,?,?,?,?,?)",
                    (dom, tool_id, fp, h, now, now),
                )
            else:
                self._db.execute(
                    "UPDATE pins SET key_fingerprint=?, definition_hash=?, last_seen=?, pending_fingerprint=NULL, "
                    "pending_definition_hash=NULL, pending_since=NULL WHERE domain=? AND tool_id=?",
                    (fp, h, now, dom, tool_id),
                )
                if moves(pin, fp, h):
                    self._db.execute(_WRITES.clear_rejected, (dom, tool_id))
            self._event(dom, tool_id, PinEvent.APPROVE, pin, fp, h, actor)
            new = self._get(dom, tool_id)
            assert new is not None
            return new

    def reject(
        self,
        domain: str,
        tool_id: str,
        *,
        key_fingerprint: str,
        definition_hash: str,
        actor: str | None = None,
    ) -> Pin | None:
        """Turn down the pending change ``(key_fingerprint, definition_hash)``: it is cleared,
        the pinned key and definition stay. Returns the pin, or ``None`` (nothing written) when
        that is not the change pending now: none is, or another one was swapped in since the
        caller read it (clearing that one would reject what nobody reviewed).

        The rejection sticks (it replaces an earlier one): an upstream that keeps presenting the
        rejected change still gets ``KEY_CHANGED`` / ``DEFINITION_CHANGED`` from ``check_and_pin``,
        but it is not held pending again (``hold``). Another change is pending as usual; only
        ``approve`` naming the rejected values accepts them, and ``remove`` forgets them.
        """
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        with self._tx():
            pin = self._get(dom, tool_id)
            if not _pending_is(pin, fp, h):
                return None
            self._db.execute(_WRITES.reject, (fp, h, _now(), dom, tool_id))
            self._event(dom, tool_id, PinEvent.REJECT, pin, fp, h, actor)
            return self._get(dom, tool_id)

    def remove(self, domain: str, tool_id: str, *, actor: str | None = None) -> bool:
        """Delete a pin (the next verification is a first use again). True if one existed."""
        dom = normalize_domain(domain)
        with self._tx():
            pin = self._get(dom, tool_id)
            if pin is None:
                return False
            self._db.execute("DELETE FROM pins WHERE domain=? AND tool_id=?", (dom, tool_id))
            self._event(dom, tool_id, PinEvent.REMOVE, pin, None, None, actor)
            return True

    def history(self, domain: str | None = None, tool_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail of pin changes, oldest first."""
        sql, args = history_query("pin_events", "?", domain, tool_id)
        with self._lock:
            cur = self._db.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _upgrade(db: sqlite3.Connection) -> None:
    """Add the columns a pins.db of an older release lacks (``_REJECTED_COLS``). Under
    ``BEGIN IMMEDIATE``: two processes opening the same old file add them once."""
    if set(_REJECTED_COLS) <= {row[1] for row in db.execute("PRAGMA table_info(pins)")}:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in db.execute("PRAGMA table_info(pins)")}
        for col in _REJECTED_COLS:
            if col not in have:
                db.execute(f"ALTER TABLE pins ADD COLUMN {col} TEXT")
        db.execute("COMMIT")
    except sqlite3.Error:
        db.execute("ROLLBACK")
        raise


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the store's lock; rollback and fail closed on error."""

    def __init__(self, store: PinStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._lock.acquire()
        try:
            self._store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._store._lock.release()
            raise PinStoreError(f"pin store is unavailable: {e}") from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        except sqlite3.Error as e:
            if exc_type is None:
                raise PinStoreError(f"pin store write failed: {e}") from None
        finally:
            self._store._lock.release()
        if isinstance(exc, sqlite3.Error):
            raise PinStoreError(f"pin store write failed: {exc}") from exc
