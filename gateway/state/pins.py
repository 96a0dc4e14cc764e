"""SchemaPin's TOFU key pins on PostgreSQL, shared by replicas (``[state] postgres_url``).

With each replica on its own data dir, a pin in its SQLite protects only that replica: a
replica started later (a new pod, an autoscaled one) would trust on first use again, and
take whatever key the domain serves then. Here every replica reads and writes one table, so
the first verified key of a (domain, tool) is the pin for all of them and a changed key is
``key_changed`` everywhere until a person approves it. Same contract as ``schemapin.PinStore``
(the TOFU decision, pending changes, explicit approval or rejection, an event per change, from
the one catalogue ``schemapin.PinEvent``, a rejection that sticks: migration 7 added its columns);
a pin change bumps the approvals version the
replicas poll, so each one re-verifies.
"""

from __future__ import annotations

from typing import Any, Self

import psycopg

from gateway.state.health import safe_url
from gateway.state.postgres import Postgres, bump_approvals
from schemapin import Pin, PinEvent, PinStatus, normalize_domain
from schemapin._pinrules import (
    LAST_SEEN_RESOLUTION_S,
    PIN_COLS,
    PinWrites,
    _age_s,
    _named,
    _now,
    _pending_is,
    history_query,
    moves,
)

_WRITES = PinWrites.of("symbi_pins", "%s")
# what a first use (or an approval without a pin) writes: nothing pending, nothing rejected
_INSERT = (
    "INSERT INTO symbi_pins (domain, tool_id, key_fingerprint, definition_hash, first_seen, last_seen)"
    " VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (domain, tool_id)"
)


class PgPinStore:
    """``schemapin.PinStore`` on PostgreSQL (``symbi_pins``, ``symbi_pin_events``)."""

    def __init__(self, pg: Postgres, *, owns: bool = False) -> None:
        self._pg = pg
        self._owns = owns  # the CLI's own pool; a gateway's belongs to its SharedState
        self.path = safe_url(pg.url)

    def close(self) -> None:
        if self._owns:
            self._pg.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _get(cur: psycopg.Cursor[Any], domain: str, tool_id: str, *, lock: bool = False) -> Pin | None:
        cur.execute(
            f"SELECT {PIN_COLS} FROM symbi_pins WHERE domain=%s AND tool_id=%s"
            + (" FOR UPDATE" if lock else ""),
            (domain, tool_id),
        )
        row = cur.fetchone()
        return Pin(*row) if row else None

    @staticmethod
    def _event(
        cur: psycopg.Cursor[Any],
        domain: str,
        tool_id: str,
        action: PinEvent,
        old: Pin | None,
        new_fp: str | None,
        new_hash: str | None,
        actor: str | None,
    ) -> None:
        cur.execute(
            "INSERT INTO symbi_pin_events (at, domain, tool_id, action, old_fingerprint, new_fingerprint,"
            " old_definition_hash, new_definition_hash, actor) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
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

    def check_and_pin(
        self, domain: str, tool_id: str, key_fingerprint: str, definition_hash: str
    ) -> tuple[PinStatus, Pin]:
        """As ``PinStore.check_and_pin``: call only after the signature verified."""
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        if not tool_id:
            raise ValueError("tool_id is required")
        with self._pg.cursor() as cur:  # fast path, no write (last_seen to LAST_SEEN_RESOLUTION_S)
            pin = self._get(cur, dom, tool_id)
        if (
            pin is not None
            and pin.key_fingerprint == fp
            and pin.definition_hash == h
            and _age_s(pin.last_seen) < LAST_SEEN_RESOLUTION_S
        ):
            return PinStatus.PINNED, pin
        with self._pg.cursor(transaction=True) as cur:
            now = _now()
            cur.execute(_INSERT + " DO NOTHING", (dom, tool_id, fp, h, now, now))
            if cur.rowcount == 1:  # first use, by whichever replica got here first
                self._event(cur, dom, tool_id, PinEvent.FIRST_USE, None, fp, h, "tofu")
                new = self._get(cur, dom, tool_id)
                assert new is not None
                return PinStatus.FIRST_USE, new
            pin = self._get(cur, dom, tool_id, lock=True)
            assert pin is not None
            if pin.key_fingerprint == fp and pin.definition_hash == h:
                cur.execute(
                    "UPDATE symbi_pins SET last_seen=%s WHERE domain=%s AND tool_id=%s", (now, dom, tool_id)
                )
                new = self._get(cur, dom, tool_id)
                assert new is not None
                return PinStatus.PINNED, new
            status, event = _WRITES.hold(cur.execute, pin, fp, h, now)  # as PinStore's
            if event is not None:
                self._event(cur, dom, tool_id, event, pin, fp, h, None)
            return status, pin

    def get(self, domain: str, tool_id: str) -> Pin | None:
        with self._pg.cursor() as cur:
            return self._get(cur, normalize_domain(domain), tool_id)

    def pins(self, domain: str | None = None) -> list[Pin]:
        sql = f"SELECT {PIN_COLS} FROM symbi_pins"
        args: tuple[str, ...] = ()
        if domain is not None:
            sql, args = sql + " WHERE domain=%s", (normalize_domain(domain),)
        with self._pg.cursor() as cur:
            cur.execute(sql + " ORDER BY domain, tool_id", args)
            rows = cur.fetchall()
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
        """As ``PinStore.approve``: the only way a pinned key or definition changes; both values
        named, never filled in with whatever is pending at the write; the rejected change is
        forgotten when the pin moves."""
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        with self._pg.cursor(transaction=True) as cur:
            pin = self._get(cur, dom, tool_id, lock=True)
            now = _now()
            cur.execute(
                _INSERT + " DO UPDATE SET key_fingerprint=excluded.key_fingerprint,"
                " definition_hash=excluded.definition_hash, last_seen=excluded.last_seen,"
                " pending_fingerprint=NULL, pending_definition_hash=NULL, pending_since=NULL",
                (dom, tool_id, fp, h, now, now),
            )
            if pin is not None and moves(pin, fp, h):
                cur.execute(_WRITES.clear_rejected, (dom, tool_id))
            self._event(cur, dom, tool_id, PinEvent.APPROVE, pin, fp, h, actor)
            bump_approvals(cur)
            new = self._get(cur, dom, tool_id)
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
        """As ``PinStore.reject``: clears the pending change if it is still the one named (the
        row locked from the comparison to the write), keeping the pin and remembering the change
        as rejected (not pending again when presented again); else ``None``."""
        dom, fp, h = _named(domain, key_fingerprint, definition_hash)
        with self._pg.cursor(transaction=True) as cur:
            pin = self._get(cur, dom, tool_id, lock=True)
            if not _pending_is(pin, fp, h):
                return None
            cur.execute(_WRITES.reject, (fp, h, _now(), dom, tool_id))
            self._event(cur, dom, tool_id, PinEvent.REJECT, pin, fp, h, actor)
            bump_approvals(cur)  # as a SQLite pins.db write: the gateways look again (still blocked)
            return self._get(cur, dom, tool_id)

    def remove(self, domain: str, tool_id: str, *, actor: str | None = None) -> bool:
        dom = normalize_domain(domain)
        with self._pg.cursor(transaction=True) as cur:
            pin = self._get(cur, dom, tool_id, lock=True)
            if pin is None:
                return False
            cur.execute("DELETE FROM symbi_pins WHERE domain=%s AND tool_id=%s", (dom, tool_id))
            self._event(cur, dom, tool_id, PinEvent.REMOVE, pin, None, None, actor)
            bump_approvals(cur)
            return True

    def history(self, domain: str | None = None, tool_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = history_query("symbi_pin_events", "%s", domain, tool_id)
        with self._pg.cursor() as cur:
            cur.execute(sql, args)
            names = [d.name for d in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
