"""A PostgreSQL database a version-6 gateway made and wrote pins to, upgraded to 7 by a newer one.

Migration 7 (gateway.state.postgres.MIGRATIONS) added the pin store's rejected-change columns
(gateway.state.pins). The other tests create their databases from nothing; a deployment's
database was made by an older release and has its rows. Here: migrations 1..6 only (a
version-6 gateway's ``migrate``), pins written with the columns that existed then -- a plain
pin, a held key change, a held definition change, their event trail -- then the database
opened as this release opens it (migrated to 7): the old rows read as they were written, and
a rejection of the held key change sticks on the upgraded database.

Its own module: the module-scoped ``postgres_engine`` (tests/state/conftest.py) is a server of
its own for this module (its own folder and port, per xdist worker too); the test checks it
starts from an empty database rather than trusting that.
"""

from __future__ import annotations

import hashlib

import psycopg
import pytest

from gateway.state import postgres
from gateway.state.pins import PgPinStore
from gateway.state.postgres import MIGRATIONS, Postgres
from schemapin import Pin, PinEvent, PinStatus
from schemapin._pinrules import _now
from tests.state.engines import Postgres as PgEngine

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
REJECTED = ("rejected_fingerprint", "rejected_definition_hash", "rejected_at", "rejected_seen")


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _pin_columns(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'symbi_pins'"
        ).fetchall()
    return {r[0] for r in rows}


def _versions(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM symbi_schema ORDER BY version").fetchall()]


def _as_version_6_wrote(url: str, t0: str, t1: str) -> None:
    """What a version-6 gateway's pin store wrote: its columns only (no rejected_*)."""
    with psycopg.connect(url) as conn:
        conn.cursor().executemany(
            "INSERT INTO symbi_pins (domain, tool_id, key_fingerprint, definition_hash, first_seen,"
            " last_seen, pending_fingerprint, pending_definition_hash, pending_since)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                ("example.com", "plain", FP_A, h("p1"), t0, t0, None, None, None),
                ("example.com", "rekeyed", FP_A, h("r1"), t0, t0, FP_B, h("r1"), t1),  # a held key change
                ("other.org", "resigned", FP_B, h("s1"), t0, t1, FP_B, h("s2"), t1),  # a held definition
            ],
        )
        conn.cursor().executemany(
            "INSERT INTO symbi_pin_events (at, domain, tool_id, action, old_fingerprint, new_fingerprint,"
            " old_definition_hash, new_definition_hash, actor) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            [
                (t0, "example.com", "rekeyed", "pin_first_use", None, FP_A, None, h("r1"), "tofu"),
                (t1, "example.com", "rekeyed", "pending_key_changed", FP_A, FP_B, h("r1"), h("r1"), None),
            ],
        )


def test_a_version_6_database_upgraded_to_7_keeps_its_pins_and_remembers_a_rejection(
    postgres_engine: PgEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_engine.url
    assert [v for v, _ in MIGRATIONS][5:7] == [6, 7]  # the numbering this test is about
    with psycopg.connect(url) as conn:  # a server of this module's own: nothing made in it yet
        assert conn.execute("SELECT to_regclass('symbi_schema')").fetchone() == (None,)

    # a version-6 gateway: the same migrate, with the list that release shipped (its first six)
    with monkeypatch.context() as v6:
        v6.setattr(postgres, "MIGRATIONS", MIGRATIONS[:6])
        Postgres(url, timeout_s=2).open().close()
    assert _versions(url) == [1, 2, 3, 4, 5, 6]
    assert "pending_fingerprint" in _pin_columns(url) and not _pin_columns(url) & set(REJECTED)
    t0, t1 = _now(), _now()
    _as_version_6_wrote(url, t0, t1)

    pg = Postgres(url, timeout_s=2).open()  # this release: migrated to 7 on open
    try:
        assert _versions(url) == [v for v, _ in MIGRATIONS]  # 7 and every later one
        assert set(REJECTED) <= _pin_columns(url)
        pins = PgPinStore(pg)
        # the old rows, read as they were written, nothing rejected yet
        assert pins.pins() == [
            Pin("example.com", "plain", FP_A, h("p1"), t0, t0),
            Pin("example.com", "rekeyed", FP_A, h("r1"), t0, t0, FP_B, h("r1"), t1),
            Pin("other.org", "resigned", FP_B, h("s1"), t0, t1, FP_B, h("s2"), t1),
        ]
        assert [(e["action"], e["new_fingerprint"]) for e in pins.history("example.com", "rekeyed")] == [
            (PinEvent.FIRST_USE, FP_A),
            (PinEvent.PENDING_KEY_CHANGED, FP_B),
        ]
        # the held changes are still held: the pins stand
        assert pins.check_and_pin("example.com", "plain", FP_A, h("p1"))[0] is PinStatus.PINNED
        assert pins.check_and_pin("example.com", "rekeyed", FP_B, h("r1"))[0] is PinStatus.KEY_CHANGED
        assert pins.check_and_pin("other.org", "resigned", FP_B, h("s2"))[0] is PinStatus.DEFINITION_CHANGED

        # the new behaviour on the upgraded rows: the held key change (written by version 6)
        # rejected, then presented again: refused as rejected, not pending for review again
        rejected = pins.reject("example.com", "rekeyed", key_fingerprint=FP_B, definition_hash=h("r1"))
        assert rejected is not None and rejected.rejects(FP_B, h("r1")) and rejected.rejected_at is not None
        for _ in range(2):
            assert pins.check_and_pin("example.com", "rekeyed", FP_B, h("r1"))[0] is PinStatus.KEY_CHANGED
        pin = pins.get("example.com", "rekeyed")
        assert pin is not None and (pin.key_fingerprint, pin.definition_hash) == (FP_A, h("r1"))
        assert (pin.pending_fingerprint, pin.pending_definition_hash, pin.pending_since) == (None, None, None)
        assert pin.rejects(FP_B, h("r1")) and pin.rejected_seen is not None
        assert [p.tool_id for p in pins.pins() if p.pending_fingerprint] == ["resigned"]  # the queue
        assert [e["action"] for e in pins.history("example.com", "rekeyed")][2:] == [
            PinEvent.REJECT,
            PinEvent.REJECTED_PRESENTED,
        ]

        # migrating again (another replica starting, a restart) changes nothing
        assert pg.migrate() == MIGRATIONS[-1][0]
    finally:
        pg.close()
    with PgPinStore(Postgres(url, timeout_s=2).open(), owns=True) as again:  # opened again after
        assert _versions(url) == [v for v, _ in MIGRATIONS]
        pin = again.get("example.com", "rekeyed")
        assert pin is not None and pin.rejects(FP_B, h("r1")) and pin.pending_fingerprint is None
        assert len(again.pins()) == 3
