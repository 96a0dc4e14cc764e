"""SchemaPin key pins on a real PostgreSQL, against the SQLite ``PinStore`` they replace.

One contract, two stores (the TOFU decision, pending changes, approval, rejection, removal,
the event trail). Then what only replicas have: a replica that starts later, with an empty
data dir, does not trust on first use again -- a key another replica pinned is the pin, and
a different key is ``key_changed`` until a person approves it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.state.pins import PgPinStore
from gateway.state.postgres import Postgres
from schemapin import PinEvent, PinStatus, PinStore
from tests.state.engines import Postgres as PgEngine

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def pg(postgres_engine: PgEngine) -> Iterator[Postgres]:
    p = Postgres(postgres_engine.url, timeout_s=2).open()
    with p.cursor() as cur:  # each test starts with no pin
        cur.execute("DELETE FROM symbi_pins; DELETE FROM symbi_pin_events")
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(params=["sqlite", "postgres"])
def pins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PinStore | PgPinStore]:
    store: PinStore | PgPinStore
    if request.param == "sqlite":
        store = PinStore(tmp_path / "pins.db")
    else:
        store = PgPinStore(request.getfixturevalue("pg"))
    try:
        yield store
    finally:
        store.close()


def test_first_use_pins_then_a_change_is_pending_until_approved(pins: PinStore | PgPinStore) -> None:
    status, pin = pins.check_and_pin("Example.COM", "echo", FP_A, h("v1"))
    assert status is PinStatus.FIRST_USE and pin.domain == "example.com" and pin.definition_hash == h("v1")
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v1"))[0] is PinStatus.PINNED
    status, pin = pins.check_and_pin("example.com", "echo", FP_B, h("v1"))  # a swapped key
    assert status is PinStatus.KEY_CHANGED and pin.key_fingerprint.endswith("a" * 64)  # the old pin stands
    status, _ = pins.check_and_pin("example.com", "echo", FP_A, h("v2"))  # re-signed new definition
    assert status is PinStatus.DEFINITION_CHANGED
    got = pins.get("example.com", "echo")
    assert got is not None and got.pending_definition_hash == h("v2")
    approved = pins.approve(
        "example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v2"), actor="alice"
    )
    assert approved.definition_hash == h("v2") and approved.pending_definition_hash is None
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v2"))[0] is PinStatus.PINNED
    actions = [e["action"] for e in pins.history("example.com", "echo")]
    assert actions == [
        PinEvent.FIRST_USE,
        PinEvent.PENDING_KEY_CHANGED,
        PinEvent.PENDING_DEFINITION_CHANGED,
        PinEvent.APPROVE,
    ]
    assert [p.tool_id for p in pins.pins("example.com")] == ["echo"]
    assert pins.remove("example.com", "echo", actor="alice") and not pins.remove("example.com", "echo")
    assert pins.get("example.com", "echo") is None


@pytest.mark.parametrize(
    "named",
    [{}, {"key_fingerprint": FP_B}, {"definition_hash": h("v1")}],
    ids=["nothing", "key-only", "hash-only"],
)
def test_an_approval_naming_less_than_both_values_pins_nothing(
    pins: PinStore | PgPinStore, named: dict[str, str]
) -> None:
    """The store never fills an unnamed value in with the pending one: a caller that names
    nothing (or one part) would otherwise approve a rotation nobody reviewed."""
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))  # a rotation, pending
    before = pins.get("example.com", "echo")
    with pytest.raises(TypeError):
        pins.approve("example.com", "echo", actor="alice", **named)
    assert pins.get("example.com", "echo") == before
    assert pins.check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is PinStatus.KEY_CHANGED


def test_a_replica_started_later_does_not_trust_on_first_use_again(pg: Postgres, tmp_path: Path) -> None:
    first = PgPinStore(pg)
    assert first.check_and_pin("example.com", "echo", FP_A, h("v1"))[0] is PinStatus.FIRST_USE
    # a new replica: its own data dir (an empty SQLite pin store would say FIRST_USE here)
    assert PinStore(tmp_path / "fresh.db").check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is (
        PinStatus.FIRST_USE
    )
    other = Postgres(pg.url, timeout_s=2).open()  # its own pool, the shared table
    try:
        later = PgPinStore(other)
        status, pin = later.check_and_pin("example.com", "echo", FP_B, h("v1"))
        assert status is PinStatus.KEY_CHANGED and pin.key_fingerprint.endswith("a" * 64)
        first.approve(  # a person accepts the new key, once
            "example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1"), actor="alice"
        )
        assert later.check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is PinStatus.PINNED
    finally:
        other.close()


def test_a_pin_change_bumps_the_version_replicas_poll(pg: Postgres) -> None:
    from gateway.state.postgres import PgToolStateStore

    tools, pins = PgToolStateStore(pg), PgPinStore(pg)
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    before = tools.version()
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))
    pins.approve("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1"), actor="alice")
    assert tools.version() != before


def _key_change_pending(pg: Postgres, postgres_engine: PgEngine, tmp_path: Path) -> tuple[PgPinStore, Path]:
    """A shared pin of echo@example.com with a new key pending, and a config on that PostgreSQL
    (the CLI's)."""
    from tests.conftest import write_config

    shared = PgPinStore(pg)
    shared.check_and_pin("example.com", "echo", FP_A, h("v1"))
    shared.check_and_pin("example.com", "echo", FP_B, h("v1"))  # pending: a new key
    cfg = write_config(
        tmp_path,
        f'[gateway]\ndata_dir = "{tmp_path / "d"}"\n[state]\npostgres_url = "{postgres_engine.url}"\n',
    )
    return shared, cfg


def test_the_pins_cli_reads_and_approves_the_shared_pins(
    pg: Postgres, postgres_engine: PgEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from gateway.cli import main

    shared, cfg = _key_change_pending(pg, postgres_engine, tmp_path)
    capsys.readouterr()
    assert main(["schemapin", "pins", "list", "--config", str(cfg), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(p["tool_id"], p["pending_fingerprint"]) for p in listed] == [("echo", FP_B)]
    argv = ["schemapin", "pins", "approve", "--config", str(cfg), "--domain", "example.com", "--tool", "echo"]
    before = shared.get("example.com", "echo")
    assert main([*argv, "--actor", "alice"]) == 1  # the new key is not named: refused, nothing pinned
    assert shared.get("example.com", "echo") == before
    assert main([*argv, "--fingerprint", FP_B, "--actor", "alice"]) == 0  # as `pins show` printed it
    pin = shared.get("example.com", "echo")
    assert pin is not None and pin.key_fingerprint == FP_B and pin.pending_fingerprint is None


# -- turning a pending change down: the pin stays, the change is never accepted ---------------


def test_a_rejection_clears_the_pending_change_keeps_the_pin_and_is_recorded(
    pins: PinStore | PgPinStore,
) -> None:
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))  # a rotation the person turns down
    kept = pins.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1"), actor="bob")
    assert kept is not None and (kept.key_fingerprint, kept.definition_hash) == (FP_A, h("v1"))
    assert (kept.pending_fingerprint, kept.pending_definition_hash, kept.pending_since) == (None, None, None)
    event = pins.history("example.com", "echo")[-1]
    assert (event["action"], event["actor"]) == (PinEvent.REJECT, "bob")
    assert (event["old_fingerprint"], event["new_fingerprint"]) == (
        FP_A,
        FP_B,
    )  # what stayed, what was turned down
    # the upstream keeps presenting the rejected key: refused again, never pinned, not pending again
    status, pin = pins.check_and_pin("example.com", "echo", FP_B, h("v1"))
    assert status is PinStatus.KEY_CHANGED and pin.key_fingerprint == FP_A
    again = pins.get("example.com", "echo")
    assert again is not None and again.key_fingerprint == FP_A and again.pending_fingerprint is None
    assert again.rejects(FP_B, h("v1"))
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v1"))[0] is PinStatus.PINNED  # the trusted key
    # a re-signed definition, likewise
    pins.check_and_pin("example.com", "echo", FP_A, h("v2"))
    assert pins.reject("example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v2")) is not None
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v2"))[0] is PinStatus.DEFINITION_CHANGED
    got = pins.get("example.com", "echo")
    assert got is not None and got.definition_hash == h("v1") and got.pending_definition_hash is None


def test_a_rejected_change_presented_again_is_refused_not_pending_and_recorded_once(
    pins: PinStore | PgPinStore,
) -> None:
    """A rejection sticks: the upstream presenting the rejected change is refused and not queued
    for review again (a later reviewer would approve it by mistake); the trail records once that
    it came back, not on every verification."""
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))
    assert pins.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1")) is not None
    for _ in range(3):
        assert pins.check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is PinStatus.KEY_CHANGED
    pin = pins.get("example.com", "echo")
    assert pin is not None and (pin.pending_fingerprint, pin.pending_definition_hash) == (None, None)
    assert pin.rejects(FP_B, h("v1")) and pin.rejected_at is not None and pin.rejected_seen is not None
    assert [p for p in pins.pins() if p.pending_fingerprint] == []  # nothing in the review queue
    actions = [e["action"] for e in pins.history("example.com", "echo")]
    assert actions == [
        PinEvent.FIRST_USE,
        PinEvent.PENDING_KEY_CHANGED,
        PinEvent.REJECT,
        PinEvent.REJECTED_PRESENTED,
    ]


def test_another_change_after_a_rejection_is_pending_and_the_rejected_one_can_still_be_approved(
    pins: PinStore | PgPinStore,
) -> None:
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_A, h("v2"))
    assert pins.reject("example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v2")) is not None
    # another change: pending as usual, the rejected record kept beside it
    assert pins.check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is PinStatus.KEY_CHANGED
    pin = pins.get("example.com", "echo")
    assert pin is not None and pin.pending_fingerprint == FP_B and pin.rejects(FP_A, h("v2"))
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v2"))[0] is PinStatus.DEFINITION_CHANGED
    pin = pins.get("example.com", "echo")  # the rejected one back: the other stays the pending one
    assert pin is not None and pin.pending_fingerprint == FP_B and pin.rejects(FP_A, h("v2"))
    # a person changes their mind: the rejected change, named, is pinned and forgotten as rejected
    approved = pins.approve("example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v2"), actor="al")
    assert approved.definition_hash == h("v2") and approved.pending_fingerprint is None
    assert (approved.rejected_fingerprint, approved.rejected_definition_hash) == (None, None)
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v2"))[0] is PinStatus.PINNED


def test_re_approving_the_pin_keeps_the_rejection_and_removing_it_forgets_it(
    pins: PinStore | PgPinStore,
) -> None:
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))
    pins.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1"))
    # the pinned values approved again: the pin does not move, the rejection stands
    kept = pins.approve("example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v1"))
    assert kept.rejects(FP_B, h("v1"))
    assert pins.remove("example.com", "echo")
    assert pins.check_and_pin("example.com", "echo", FP_A, h("v1"))[0] is PinStatus.FIRST_USE
    pin = pins.get("example.com", "echo")
    assert pin is not None and (pin.rejected_fingerprint, pin.rejected_definition_hash) == (None, None)


def test_a_pin_store_of_an_older_release_is_upgraded_and_keeps_its_pins(tmp_path: Path) -> None:
    """A pins.db written before rejections were remembered (no rejected_* columns) opens, keeps
    its pin and pending change, and can then remember a rejection."""
    import sqlite3

    path = tmp_path / "pins.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE pins (domain TEXT NOT NULL, tool_id TEXT NOT NULL, key_fingerprint TEXT NOT NULL,"
        " definition_hash TEXT NOT NULL, first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,"
        " pending_fingerprint TEXT, pending_definition_hash TEXT, pending_since TEXT,"
        " PRIMARY KEY (domain, tool_id));"
    )
    old.execute(
        "INSERT INTO pins VALUES ('example.com', 'echo', ?, ?, 't0', 't0', ?, ?, 't1')",
        (FP_A, h("v1"), FP_B, h("v1")),
    )
    old.commit()
    old.close()
    with PinStore(path) as store:
        pin = store.get("example.com", "echo")
        assert pin is not None and (pin.key_fingerprint, pin.pending_fingerprint) == (FP_A, FP_B)
        assert store.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1")) is not None
    with PinStore(path) as store:  # opened again: nothing to add
        assert store.check_and_pin("example.com", "echo", FP_B, h("v1"))[0] is PinStatus.KEY_CHANGED
        pin = store.get("example.com", "echo")
        assert pin is not None and pin.pending_fingerprint is None and pin.rejects(FP_B, h("v1"))


@pytest.mark.parametrize(
    "named",
    [(FP_B, h("v1")), (FP_A, h("v2")), (FP_B, h("v2"))],
    ids=["another-key", "another-definition", "both-other"],
)
def test_a_rejection_naming_another_change_than_the_pending_one_writes_nothing(
    pins: PinStore | PgPinStore, named: tuple[str, str]
) -> None:
    """The store compares the pending change with the one named where it writes: a change
    swapped in after the caller's read is not cleared (nor recorded as rejected) under the
    reviewed one's name."""
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v3"))  # pending now: another change
    before, trail = pins.get("example.com", "echo"), pins.history("example.com", "echo")
    key, definition = named
    assert pins.reject("example.com", "echo", key_fingerprint=key, definition_hash=definition) is None
    assert pins.get("example.com", "echo") == before and pins.history("example.com", "echo") == trail


def test_a_rejection_with_nothing_pending_or_no_pin_writes_nothing(pins: PinStore | PgPinStore) -> None:
    assert pins.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1")) is None
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    before = pins.get("example.com", "echo")
    assert pins.reject("example.com", "echo", key_fingerprint=FP_A, definition_hash=h("v1")) is None
    assert pins.get("example.com", "echo") == before
    assert [e["action"] for e in pins.history()] == [PinEvent.FIRST_USE]


def test_a_rejection_bumps_the_version_replicas_poll(pg: Postgres) -> None:
    from gateway.state.postgres import PgToolStateStore

    tools, pins = PgToolStateStore(pg), PgPinStore(pg)
    pins.check_and_pin("example.com", "echo", FP_A, h("v1"))
    pins.check_and_pin("example.com", "echo", FP_B, h("v1"))
    before = tools.version()
    assert pins.reject("example.com", "echo", key_fingerprint=FP_B, definition_hash=h("v1")) is not None
    assert tools.version() != before


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_rejected_key_keeps_the_tool_blocked_while_the_upstream_presents_it(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    """Through the verifier: a tool whose signing key rotated is blocked; the person rejects
    the rotation; the upstream keeps signing with the rejected key, and the tool stays blocked
    (not pending again), while the trusted key still verifies."""
    import schemapin
    from gateway.context import is_blocked
    from gateway.verify.approve import reject_pin_change
    from gateway.verify.verifier import ToolVerifier
    from tests.conftest import RecordingSink
    from tests.verify.test_verifier import DEF, assess, config, signed

    cfg = config(tmp_path, "strict", server='domain = "up.example"')
    shared = PgPinStore(request.getfixturevalue("pg")) if store == "postgres" else None
    trusted, rotated = schemapin.generate_private_key(), schemapin.generate_private_key()

    def verifier(key: Any) -> ToolVerifier:  # the upstream's key as discovered now
        snap = schemapin.KeySnapshot.from_public_key(key.public_key())
        return ToolVerifier(cfg, RecordingSink(), resolver=schemapin.StaticKeyResolver(snap), pins=shared)

    v = verifier(trusted)
    assert assess(v, signed(DEF, trusted))["up__echo"].verification == "verified"
    v.close()
    v = verifier(rotated)
    assert assess(v, signed(DEF, rotated))["up__echo"].verification == "drifted"
    fp_trusted, fp_rotated = (
        schemapin.fingerprint(trusted.public_key()),
        schemapin.fingerprint(rotated.public_key()),
    )
    kept = reject_pin_change(
        v.pins, "up.example", "echo", fingerprint=fp_rotated, definition_hash=None, actor="sec"
    )
    assert kept.key_fingerprint == fp_trusted
    for _ in range(2):  # the next listings, still signed with the rejected key
        info = assess(v, signed(DEF, rotated))["up__echo"]
        assert is_blocked(info.verification_mode, info.verification)
        pin = v.pins.get("up.example", "echo")
        assert pin is not None and pin.key_fingerprint == fp_trusted
    v.close()
    v = verifier(trusted)  # the developer goes back to the trusted key: verified again
    assert assess(v, signed(DEF, trusted))["up__echo"].verification == "verified"
    v.close()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_rejection_sticks_through_the_verifier_until_a_person_approves_the_rejected_key(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    """Through the verifier: the rejected key presented again is refused as a rejected change
    and is not pending review again (it used to be queued again, for a later reviewer to
    approve by mistake); another key is pending as usual; a person who changes their mind
    approves the rejected key by naming it, even with the other one pending."""
    import schemapin
    from gateway.context import is_blocked
    from gateway.verify.approve import reject_pin_change, reviewed_pin_change
    from gateway.verify.verifier import ToolVerifier
    from tests.conftest import RecordingSink
    from tests.verify.test_verifier import DEF, assess, config, signed

    cfg = config(tmp_path, "strict", server='domain = "up.example"')
    shared = PgPinStore(request.getfixturevalue("pg")) if store == "postgres" else None
    trusted, rotated, third = (schemapin.generate_private_key() for _ in range(3))
    fp_rotated, fp_third = (schemapin.fingerprint(k.public_key()) for k in (rotated, third))

    def verifier(key: Any) -> ToolVerifier:  # the upstream's key as discovered now
        snap = schemapin.KeySnapshot.from_public_key(key.public_key())
        return ToolVerifier(cfg, RecordingSink(), resolver=schemapin.StaticKeyResolver(snap), pins=shared)

    v = verifier(trusted)
    assess(v, signed(DEF, trusted))
    v.close()
    v = verifier(rotated)
    assert assess(v, signed(DEF, rotated))["up__echo"].verification == "drifted"
    reject_pin_change(v.pins, "up.example", "echo", fingerprint=fp_rotated, definition_hash=None, actor="sec")
    info = assess(v, signed(DEF, rotated))["up__echo"]  # presented again
    assert is_blocked(info.verification_mode, info.verification)
    pin = v.pins.get("up.example", "echo")
    assert pin is not None and pin.pending_fingerprint is None and pin.rejected_fingerprint == fp_rotated
    with pytest.raises(schemapin.KeyPinMismatch) as refused:  # the same refusal, saying it was rejected
        schemapin.verify_tool(
            DEF,
            schemapin.sign_tool(dict(DEF), rotated),
            domain="up.example",
            tool_id="echo",
            key_source=schemapin.KeySnapshot.from_public_key(rotated.public_key()),
            pin_store=v.pins,
        )
    assert refused.value.details["rejected"] is True
    v.close()
    v = verifier(third)  # another rotation: pending review, as any change
    assert assess(v, signed(DEF, third))["up__echo"].verification == "drifted"
    pin = v.pins.get("up.example", "echo")
    assert pin is not None and pin.pending_fingerprint == fp_third and pin.rejected_fingerprint == fp_rotated
    fp, h_ = reviewed_pin_change(pin, "up.example", "echo", fingerprint=fp_rotated, definition_hash=None)
    v.pins.approve("up.example", "echo", key_fingerprint=fp, definition_hash=h_, actor="sec")
    v.close()
    v = verifier(rotated)
    assert assess(v, signed(DEF, rotated))["up__echo"].verification == "verified"
    v.close()


def test_the_pins_cli_rejects_a_shared_pending_change(
    pg: Postgres, postgres_engine: PgEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    shared, cfg = _key_change_pending(pg, postgres_engine, tmp_path)
    argv = ["schemapin", "pins", "reject", "--config", str(cfg), "--domain", "example.com", "--tool", "echo"]
    before = shared.get("example.com", "echo")
    assert main([*argv, "--actor", "alice"]) == 1  # the key turned down is not named: refused
    assert main([*argv, "--fingerprint", FP_A, "--actor", "alice"]) == 1  # not the pending key
    assert shared.get("example.com", "echo") == before
    assert main([*argv, "--fingerprint", FP_B, "--actor", "alice"]) == 0
    pin = shared.get("example.com", "echo")
    assert pin is not None and pin.key_fingerprint == FP_A and pin.pending_fingerprint is None
    event = shared.history("example.com", "echo")[-1]
    assert (event["action"], event["new_fingerprint"], event["actor"]) == (PinEvent.REJECT, FP_B, "alice")
