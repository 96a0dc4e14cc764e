"""What both pin stores share (``PinStore``'s SQLite here, the gateway's PostgreSQL one): the
pin and its statuses, the one catalogue of pin events, the rules for a verified change
(``hold``, ``moves``), and the statements and queries both write them with.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ._crypto import normalize_fingerprint
from ._domain import normalize_domain

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


def normalize_definition_hash(value: str) -> str:
    """A full sha256 definition hash, lower case; ValueError for anything else."""
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise ValueError(f"not a sha256 hex definition hash: {value!r}")
    return v


def _named(domain: str, key_fingerprint: str, definition_hash: str) -> tuple[str, str, str]:
    """(domain, key fingerprint, definition hash) as every pin store keeps them (normalised)."""
    return (
        normalize_domain(domain),
        normalize_fingerprint(key_fingerprint),
        normalize_definition_hash(definition_hash),
    )


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
