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

import enum
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

from ._crypto import normalize_fingerprint
from ._domain import normalize_domain
from ._errors import PinStoreError

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
# added after the first release: a pins.db of an older one gets them when opened (_upgrade)
_REJECTED_COLS = ("rejected_fingerprint", "rejected_definition_hash", "rejected_at", "rejected_seen")
PIN_COLS = (
    "domain, tool_id, key_fingerprint, definition_hash, first_seen, last_seen, pending_fingerprint,"
    " pending_definition_hash, pending_since, " + ", ".join(_REJECTED_COLS)
)


class PinStatus(str, enum.Enum):
    """Outcome of comparing a verified (key, definition) with the pin."""

    FIRST_USE = "first_use"
    PINNED = "pinned"
    KEY_CHANGED = "key_changed"
    DEFINITION_CHANGED = "definition_changed"


class PinEvent(enum.StrEnum):
    """Every action a pin store writes to its event trail (``history``): the one catalogue of
    both stores (this one and the gateway's PostgreSQL one). The value is what is stored."""

    FIRST_USE = "pin_first_use"  # the first verified (key, definition) pinned (actor "tofu")
    PENDING_KEY_CHANGED = "pending_key_changed"  # a verified new key held for a person
    PENDING_DEFINITION_CHANGED = "pending_definition_changed"  # a re-signed definition, held
    APPROVE = "approve"  # a person pinned the named key and definition (the pending change)
    REJECT = "reject"  # a person turned the pending change down: the pin stays (new_*: rejected)
    # the upstream presented the rejected change again: refused, not pending; once per rejection
    REJECTED_PRESENTED = "rejected_presented"
    REMOVE = "remove"  # a person deleted the pin: the next verification is a first use

    @classmethod
    def pending(cls, status: PinStatus) -> PinEvent:
        """The event of a change held pending (``KEY_CHANGED`` or ``DEFINITION_CHANGED``)."""
        return cls(f"pending_{status.value}")


@dataclass(frozen=True)
class Pin:
    """One pinned (domain, tool id), with a pending change awaiting approval, if any, and the
    change a person last rejected, if any (``rejected_seen``: when the upstream first presented
    it again after the rejection)."""

    domain: str
    tool_id: str
    key_fingerprint: str
    definition_hash: str
    first_seen: str
    last_seen: str
    pending_fingerprint: str | None = None
    pending_definition_hash: str | None = None
    pending_since: str | None = None
    rejected_fingerprint: str | None = None
    rejected_definition_hash: str | None = None
    rejected_at: str | None = None
    rejected_seen: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return dict(self.__dict__)

    def rejects(self, key_fingerprint: str, definition_hash: str) -> bool:
        """Whether (normalised) ``(key_fingerprint, definition_hash)`` is the change a person rejected."""
        return (
            self.rejected_fingerprint == key_fingerprint and self.rejected_definition_hash == definition_hash
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


LAST_SEEN_RESOLUTION_S = 60.0


def _age_s(iso: str) -> float:
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()
    except ValueError:
        return float("inf")


def _hash(value: str) -> str:
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError(f"not a sha256 hex definition hash: {value!r}")
    return v


def _named(domain: str, key_fingerprint: str, definition_hash: str) -> tuple[str, str, str]:
    """(domain, key fingerprint, definition hash) as every pin store keeps them (normalised)."""
    return normalize_domain(domain), normalize_fingerprint(key_fingerprint), _hash(definition_hash)


def _pending_is(pin: Pin | None, fp: str, h: str) -> bool:
    """Whether ``(fp, h)`` is the change pending on ``pin`` (what a rejection must name)."""
    return pin is not None and (pin.pending_fingerprint, pin.pending_definition_hash) == (fp, h)


def hold(pin: Pin, fp: str, h: str) -> tuple[PinStatus, PinEvent | None]:
    """What both stores do with a verified change ``(fp, h)`` from ``pin``: its status, and the
    event to write with it (``None``: write nothing).

    A new change is held pending (``PinEvent.pending``); the one already pending writes nothing.
    The change a person rejected is refused and *not* held pending (it would be queued for
    review again, and approved by a later reviewer by mistake); its event is written the first
    time it comes back only, not on every verification.
    """
    status = PinStatus.KEY_CHANGED if pin.key_fingerprint != fp else PinStatus.DEFINITION_CHANGED
    if pin.rejects(fp, h):
        return status, (PinEvent.REJECTED_PRESENTED if pin.rejected_seen is None else None)
    if (pin.pending_fingerprint, pin.pending_definition_hash) == (fp, h):
        return status, None
    return status, PinEvent.pending(status)


def moves(pin: Pin | None, fp: str, h: str) -> bool:
    """Whether approving ``(fp, h)`` changes ``pin``: then its rejected change, if any, is
    forgotten (it was rejected against the pin that goes; or it is what is approved now)."""
    return pin is None or (pin.key_fingerprint, pin.definition_hash) != (fp, h)


@dataclass(frozen=True)
class PinWrites:
    """The statements both stores write a held or rejected change with (``PinStore``'s SQLite,
    the gateway's PostgreSQL), in the store's table and placeholder."""

    seen_rejected: str  # (now, domain, tool_id): the rejected change presented again
    hold_pending: str  # (fp, h, now, domain, tool_id): a new change, pending review
    reject: str  # (fp, h, now, domain, tool_id): the pending change rejected, remembered
    clear_rejected: str  # (domain, tool_id): the pin moved: its rejected change is forgotten

    @classmethod
    def of(cls, table: str, mark: str) -> PinWrites:
        where = f" WHERE domain={mark} AND tool_id={mark}"
        cleared = "pending_fingerprint=NULL, pending_definition_hash=NULL, pending_since=NULL"
        return cls(
            seen_rejected=f"UPDATE {table} SET rejected_seen={mark}" + where,
            hold_pending=f"UPDATE {table} SET pending_fingerprint={mark}, pending_definition_hash={mark},"
            f" pending_since={mark}" + where,
            reject=f"UPDATE {table} SET {cleared}, rejected_fingerprint={mark},"
            f" rejected_definition_hash={mark}, rejected_at={mark}, rejected_seen=NULL" + where,
            clear_rejected=f"UPDATE {table} SET rejected_fingerprint=NULL, rejected_definition_hash=NULL,"
            " rejected_at=NULL, rejected_seen=NULL" + where,
        )

    def hold(
        self, execute: Callable[[str, tuple[Any, ...]], object], pin: Pin, fp: str, h: str, now: str
    ) -> tuple[PinStatus, PinEvent | None]:
        """Write what ``hold`` decides for the change ``(fp, h)`` of ``pin`` (inside the store's
        transaction, through its ``execute``); the status, and the event the store records."""
        status, event = hold(pin, fp, h)
        at = (pin.domain, pin.tool_id)
        if event is PinEvent.REJECTED_PRESENTED:
            execute(self.seen_rejected, (now, *at))
        elif event is not None:
            execute(self.hold_pending, (fp, h, now, *at))
        return status, event


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


def history_query(table: str, mark: str, domain: str | None, tool_id: str | None) -> tuple[str, list[str]]:
    """The pin-events query of both stores (SQLite here, PostgreSQL in the gateway): ``table``
    and the driver's parameter ``mark`` differ, the columns and filters do not."""
    sql = (
        "SELECT id, at, domain, tool_id, action, old_fingerprint, new_fingerprint, old_definition_hash, "
        f"new_definition_hash, actor FROM {table}"
    )
    cond, args = [], []
    if domain is not None:
        cond.append(f"domain={mark}")
        args.append(normalize_domain(domain))
    if tool_id is not None:
        cond.append(f"tool_id={mark}")
        args.append(tool_id)
    if cond:
        sql += " WHERE " + " AND ".join(cond)
    return sql + " ORDER BY id", args


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
