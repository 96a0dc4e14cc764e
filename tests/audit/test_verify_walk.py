"""The verifier's walk over plain rows: what it escapes once per log (key id, principal, agent,
type), where it starts, and rows it must not skip, each attacked on a real log."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditRecord, exported_public_keys, store, verify_log
from gateway.audit import verify as verify_mod
from gateway.audit.record import GENESIS_HASH, canonical_bytes, chain_hash, key_id_of, sign_hash
from gateway.audit.verify import verify_records
from tests.audit.conftest import Keys, LogKeys, LogPaths, OpenLog

# names the writer escapes: quotes, backslashes, control characters, non-ASCII, empty, null
NAMES = [None, "alice", 'qu"ote', "back\\slash", "new\nline", "ctl\x01\x1f", "ünï ☃", "\u2028", ""]
TYPES = ["tool.call", 'odd "type"\\', "agent.state"]


@pytest.fixture
def varied_log(open_log: OpenLog, log_paths: LogPaths) -> LogKeys:
    """A closed log of 40 events whose principals, agents and types repeat and need escaping."""
    log = open_log(checkpoint_every=7)
    for i in range(40):
        log.emit(
            TYPES[i % len(TYPES)],
            {"n": i, "name": NAMES[i % len(NAMES)]},
            principal=NAMES[i % len(NAMES)],
            agent=NAMES[(i * 4) % len(NAMES)],
        )
    log.flush()
    log.close()
    return log_paths[0], exported_public_keys(log_paths[1])


def _rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    rows = conn.execute(f"SELECT {store.COLUMNS} FROM events ORDER BY seq").fetchall()
    conn.close()
    return rows


def _anchors(db: Path) -> list[store.Anchor]:
    conn = store.open_reader(db)
    try:
        return [a for a in (store.read_anchor(conn),) if a is not None]
    finally:
        conn.close()


def _set(db: Path, seq: int, column: str, value: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE events SET {column} = ? WHERE seq = ?", (value, seq))
    conn.close()


@pytest.fixture(params=["kept", "two"])
def escapes_kept(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk's escape cache as shipped, and cleared on every other new name."""
    if request.param == "two":
        monkeypatch.setattr(verify_mod, "_ESCAPES_KEPT", 2)


@pytest.mark.parametrize("full", [True, False])
def test_a_log_of_names_that_need_escaping_verifies(
    varied_log: LogKeys, escapes_kept: None, full: bool
) -> None:
    db, keys = varied_log
    res = verify_log(db, keys, all_signatures=full).check()
    assert (res.events, res.last_seq) == (40, 40)


@pytest.mark.parametrize("column", ["principal", "agent", "type"])
@pytest.mark.parametrize("seq", [1, 23, 40])
def test_a_name_swapped_for_one_seen_elsewhere_in_the_log_is_changed(
    varied_log: LogKeys, escapes_kept: None, column: str, seq: int
) -> None:
    db, keys = varied_log
    index = store.COLUMNS.split(", ").index(column)
    rows = _rows(db)
    seen = {r[index] for r in rows} - {rows[seq - 1][index]}  # values the walk has escaped already
    for value in sorted(seen, key=repr):
        if column == "type" and value is None:
            continue  # NOT NULL
        _set(db, seq, column, value)
        res = verify_log(db, keys)
        assert res.problem is not None and (res.problem.seq, res.problem.kind) == (seq, "changed"), value
    _set(db, seq, column, rows[seq - 1][index])
    verify_log(db, keys).check()


@pytest.mark.parametrize("column", ["principal", "agent", "type", "key_id", "id"])
def test_a_name_of_another_sqlite_type_is_changed(varied_log: LogKeys, column: str) -> None:
    db, keys = varied_log
    _set(db, 9, column, 9)
    res = verify_log(db, keys)
    assert res.problem is not None
    if column == "key_id":  # another key: its run ends the unsigned records before it
        assert (res.problem.seq, res.problem.kind) == (1, "truncated")
    else:
        assert (res.problem.seq, res.problem.kind) == (9, "changed")


@pytest.mark.parametrize("seq", [0, -3])
def test_a_row_added_outside_the_chain_fails(varied_log: LogKeys, seq: int) -> None:
    """A copy of a genuine row at seq 0 or below is in no chain, yet ``audit query`` lists it."""
    db, keys = varied_log
    row = list(_rows(db)[4])
    row[0] = seq
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(store.INSERT, row)
    conn.close()
    res = verify_log(db, keys)
    assert res.problem is not None and res.problem.seq == 1
    assert res.events == 0


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("edit", [None, (17, 6, '{"n":16,"name":"alice"}'), (17, 7, "0" * 64)])
def test_rows_and_records_verify_alike(
    varied_log: LogKeys, full: bool, edit: tuple[int, int, str] | None
) -> None:
    """``verify_records`` takes plain rows (``verify_log``) and ``AuditRecord``s (an export)."""
    db, keys = varied_log
    rows = _rows(db)
    if edit is not None:
        seq, index, value = edit
        rows[seq - 1] = rows[seq - 1][:index] + (value,) + rows[seq - 1][index + 1 :]
    anchors = _anchors(db)
    plain = verify_records(rows, keys, anchors=anchors, all_signatures=full)
    records = verify_records(map(AuditRecord._make, rows), keys, anchors=anchors, all_signatures=full)
    assert plain.as_dict() == records.as_dict()
    assert plain.ok is (edit is None)
    if edit is not None:
        assert plain.problem is not None and plain.problem.seq == 17
        assert (plain.last_seq, plain.events) == (16, 16)


def test_the_result_as_json_names_every_field(varied_log: LogKeys) -> None:
    """``symbi audit verify --json`` prints ``as_dict``: every field under its own name."""
    db, keys = varied_log
    res = verify_log(db, keys)
    assert res.as_dict() == {
        "ok": True,
        "events": 40,
        "last_seq": 40,
        "head_hash": _rows(db)[-1][8],
        "signatures_checked": res.signatures_checked,
        "key_ids": sorted(keys),
        "anchors_checked": res.anchors_checked,
        "anchored": False,
        "problem": None,
        "worker_pids": [],
    }
    assert res.signatures_checked > 0 and res.anchors_checked > 0
    _set(db, 17, "details", '{"n":16}')
    bad = verify_log(db, keys)
    assert bad.problem is not None
    assert bad.as_dict() == {
        "ok": False,
        "events": 16,
        "last_seq": 16,
        "head_hash": _rows(db)[15][8],
        "signatures_checked": bad.signatures_checked,
        "key_ids": [],
        "anchors_checked": 0,
        "anchored": False,
        "problem": {"seq": 17, "kind": "changed", "message": bad.problem.message},
        "worker_pids": [],
    }


@pytest.mark.parametrize("full", [True, False])
def test_records_ending_unsigned_at_a_vouched_hash_verify_and_elsewhere_are_truncated(
    varied_log: LogKeys, full: bool
) -> None:
    """An archive segment may end on unsigned records: its seal's signature vouches for its last
    hash (``vouched_tail``); any other hash there leaves them unvouched."""
    db, keys = varied_log
    rows = _rows(db)
    end = max(r[0] for r in rows if not r[9])  # the log's last unsigned record (the head is signed)
    head = rows[:end]
    first_unvouched = 1 + max((r[0] for r in head if r[9]), default=0)
    ok = verify_records(head, keys, all_signatures=full, vouched_tail=head[-1][8])
    assert ok.ok and (ok.events, ok.last_seq, ok.head_hash) == (end, end, head[-1][8])
    for tail in (None, head[-2][8], head[-1][9]):
        res = verify_records(head, keys, all_signatures=full, vouched_tail=tail)
        assert res.problem is not None
        assert (res.problem.seq, res.problem.kind) == (first_unvouched, "truncated")


def _signed_chain(details_texts: list[str]) -> tuple[list[tuple[Any, ...]], Keys]:
    """Rows of a chain whose details are the given texts, as stored, each record signed."""
    key = Ed25519PrivateKey.generate()
    kid = key_id_of(key.public_key())
    rows, prev = [], GENESIS_HASH
    for seq, text in enumerate(details_texts, 1):
        fields = (seq, f"r{seq}", seq, "alice", None, "tool.call", text, prev)
        h = chain_hash(prev, canonical_bytes(*fields, kid))
        rows.append((*fields, h, sign_hash(key, h), kid))
        prev = h
    return rows, {kid: key.public_key()}


# texts orjson refuses that json.loads reads as one object (a lone surrogate escape, NaN)
ORJSON_REFUSES = ['{"s":"\\ud800"}', '{"x":NaN,"y":-Infinity}']


@pytest.mark.parametrize("full", [True, False])
def test_details_only_json_reads_as_an_object_verify(full: bool) -> None:
    rows, keys = _signed_chain(['{"n":1}', *ORJSON_REFUSES, '{"n":4}'])
    res = verify_records(rows, keys, all_signatures=full)
    assert res.ok and res.events == 4


@pytest.mark.parametrize("text", ["[1]", '"text"', "NaN", '{"a":1},{"b":2}', '{"a":', '{"s":"\\ud800"'])
def test_details_that_are_not_one_object_are_changed_even_when_hashed(text: str) -> None:
    """The chain hash matches (the attacker re-hashed it), but details must be ONE JSON object."""
    rows, keys = _signed_chain(['{"n":1}', text, '{"n":3}'])
    res = verify_records(rows, keys)
    assert res.problem is not None
    assert (res.problem.seq, res.problem.kind, res.events) == (2, "changed", 1)
