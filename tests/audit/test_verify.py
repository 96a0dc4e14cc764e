"""Tamper tests: each attack on a closed 20-event log is found at the right sequence number."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    AuditIntegrityError,
    AuditLog,
    AuditRecord,
    exported_public_keys,
    store,
    verify_jsonl,
    verify_log,
)
from gateway.audit.record import canonical_details, chain_hash, key_id_of, record_bytes, sign_hash
from tests.audit.conftest import Keys, LogKeys, LogPaths, OpenLog, execute_sql

COLS = store.COLUMNS


def _row(db: Path, seq: int) -> tuple[Any, ...]:
    conn = sqlite3.connect(db)
    row: tuple[Any, ...] = conn.execute(f"SELECT {COLS} FROM events WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    return row


def _problem(db: Path, keys: Keys, *, full: bool = True) -> tuple[int, str]:
    """The first problem, the same from one process and from two (``verify_split``)."""
    res = verify_log(db, keys, all_signatures=full, jobs=1)
    assert not res.ok and res.problem is not None and res.worker_pids == ()
    split = verify_log(db, keys, all_signatures=full, jobs=2)
    assert not split.ok and split.problem == res.problem and len(set(split.worker_pids)) == 2
    with pytest.raises(AuditIntegrityError) as ei:
        res.check()
    assert ei.value.problem == res.problem and ei.value.code == "audit_integrity"
    return res.problem.seq, res.problem.kind


@pytest.mark.parametrize("full", [True, False])
def test_intact_log_verifies(written_log: LogKeys, full: bool) -> None:
    db, keys = written_log
    res = verify_log(db, keys, all_signatures=full).check()
    assert (res.events, res.last_seq, res.anchors_checked) == (20, 20, 2)
    assert res.signatures_checked == (20 if full else 1)


@pytest.mark.parametrize("full", [True, False])
def test_edited_detail_is_changed(written_log: LogKeys, full: bool) -> None:
    db, keys = written_log
    execute_sql(db, ("UPDATE events SET details = ? WHERE seq = 5", ('{"n":5,"tool":"innocent"}',)))
    assert _problem(db, keys, full=full) == (5, "changed")


@pytest.mark.parametrize("text", ["[1, 2]", '{"n": 5, "tool": "t5"}', '{"n":5,"tool":"t5"} '])
def test_details_must_be_the_exact_signed_object_text(written_log: LogKeys, text: str) -> None:
    db, keys = written_log
    assert json.loads(_row(db, 5)[6]) == {"n": 5, "tool": "t5"}
    execute_sql(db, ("UPDATE events SET details = ? WHERE seq = 5", (text,)))
    assert _problem(db, keys) == (5, "changed")


def test_edit_with_recomputed_hashes_still_fails_on_signature(written_log: LogKeys) -> None:
    db, keys = written_log
    # the attacker rewrites seq 7 and re-chains 7..20 but cannot sign with the audit key
    conn = sqlite3.connect(db)
    prev = _row(db, 6)[8]
    for seq in range(7, 21):
        r = list(_row(db, seq))
        if seq == 7:
            r[6] = canonical_details({"tool": "nothing-to-see"})
        canon = AuditRecord._make([*r[:7], prev, "", "", r[10]]).canonical()
        h = chain_hash(prev, canon)
        conn.execute(
            "UPDATE events SET details=?, prev_hash=?, chain_hash=? WHERE seq=?", (r[6], prev, h, seq)
        )
        prev = h
    conn.commit()
    conn.close()
    assert _problem(db, keys, full=True) == (7, "changed")
    assert _problem(db, keys, full=False) == (7, "changed")  # fast mode re-checks in full


def test_deleted_event_is_removed(written_log: LogKeys) -> None:
    db, keys = written_log
    execute_sql(db, ("DELETE FROM events WHERE seq = 5", ()))
    assert _problem(db, keys) == (5, "removed")


def test_deleted_and_renumbered_is_removed(written_log: LogKeys) -> None:
    db, keys = written_log
    execute_sql(
        db,
        ("DELETE FROM events WHERE seq = 5", ()),
        ("UPDATE events SET seq = -(seq - 1) WHERE seq > 5", ()),
        ("UPDATE events SET seq = -seq WHERE seq < 0", ()),
    )
    # renumbering rewrote the signed seq of the event now at 5: reported there as changed
    assert _problem(db, keys) == (5, "changed")


def test_inserted_forgery_signed_with_another_key(written_log: LogKeys) -> None:
    db, keys = written_log
    forger = Ed25519PrivateKey.generate()
    kid = key_id_of(forger.public_key())
    prev = _row(db, 4)[8]
    dj = canonical_details({"tool": "grant_admin"})
    canon = record_bytes(
        seq=5,
        id="forged",
        ts_ns=1,
        principal="alice",
        agent=None,
        type="tool.call",
        details_json=dj,
        prev_hash=prev,
        key_id=kid,
    )
    h = chain_hash(prev, canon)
    execute_sql(
        db,
        ("UPDATE events SET seq = -(seq + 1) WHERE seq >= 5", ()),
        ("UPDATE events SET seq = -seq WHERE seq < 0", ()),
        (
            f"INSERT INTO events ({COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (5, "forged", 1, "alice", None, "tool.call", dj, prev, h, sign_hash(forger, h), kid),
        ),
    )
    assert _problem(db, keys) == (5, "inserted")


def test_forgery_claiming_the_real_key_id(written_log: LogKeys) -> None:
    db, keys = written_log
    forger = Ed25519PrivateKey.generate()
    real_kid = _row(db, 3)[10]
    r = list(_row(db, 3))
    r[9] = sign_hash(forger, r[8])
    execute_sql(db, ("UPDATE events SET signature = ? WHERE seq = 3", (r[9],)))
    assert _problem(db, keys) == (3, "changed")
    assert real_kid in keys


def test_swapped_events_are_reordered(written_log: LogKeys) -> None:
    db, keys = written_log
    a, b = _row(db, 5), _row(db, 6)
    upd = (
        "UPDATE events SET id=?, ts_ns=?, principal=?, agent=?, type=?, details=?, prev_hash=?, chain_hash=?, "
        "signature=?, key_id=? WHERE seq=?"
    )
    execute_sql(db, (upd, (*b[1:], 5)), (upd, (*a[1:], 6)))
    assert _problem(db, keys) == (5, "reordered")


def test_truncated_tail(written_log: LogKeys) -> None:
    db, keys = written_log
    execute_sql(db, ("DELETE FROM events WHERE seq > 15", ()))
    assert _problem(db, keys) == (16, "truncated")


def test_truncated_tail_with_anchor_row_deleted(written_log: LogKeys) -> None:
    db, keys = written_log
    store.checkpoint_path(db).unlink()
    execute_sql(db, ("DELETE FROM events WHERE seq > 15", ()), ("DELETE FROM anchor", ()))
    assert _problem(db, keys) == (16, "truncated")


def test_truncation_with_a_replayed_old_anchor_is_caught_by_the_checkpoint_file(
    open_log: OpenLog, log_paths: LogPaths
) -> None:
    db, key_path = log_paths
    log = open_log(checkpoint_every=1000)
    for i in range(10):
        log.append("tool.call", {"i": i})
    conn = sqlite3.connect(db)
    old_anchor = conn.execute("SELECT seq, chain_hash, ts_ns, key_id, signature FROM anchor").fetchone()
    conn.close()
    for i in range(10):
        log.append("tool.call", {"i": i})
    log.close()  # writes the checkpoint file for seq 20
    keys = exported_public_keys(key_path)
    # the attacker cuts the tail and puts back the genuine anchor they saved at seq 10
    execute_sql(
        db,
        ("DELETE FROM events WHERE seq > 10", ()),
        ("UPDATE anchor SET seq=?, chain_hash=?, ts_ns=?, key_id=?, signature=?", old_anchor),
    )
    assert _problem(db, keys) == (11, "truncated")
    # the attacker deletes the checkpoint file too: an anchor shipped off the host still tells
    shipped = store.read_checkpoint_file(store.checkpoint_path(db))
    assert shipped is not None
    store.checkpoint_path(db).unlink()
    res = verify_log(db, keys, extra_anchors=[shipped])
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (11, "truncated")


def test_forged_anchor_is_rejected(written_log: LogKeys) -> None:
    db, keys = written_log
    forger = Ed25519PrivateKey.generate()
    import base64

    from gateway.audit.record import anchor_message

    head = _row(db, 20)[8]
    sig = base64.b64encode(forger.sign(anchor_message(25, head))).decode()
    execute_sql(db, ("UPDATE anchor SET seq = 25, signature = ?", (sig,)))
    assert _problem(db, keys) == (21, "anchor")  # first seq not covered by a valid anchor


def test_wrong_public_key_fails_at_seq_1(written_log: LogKeys) -> None:
    db, _ = written_log
    other = Ed25519PrivateKey.generate().public_key()
    assert _problem(db, {key_id_of(other): other}) == (1, "inserted")


def _export(db: Path, out: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(db)
    lines = [r.as_dict() for r in store.iter_records(conn)]
    conn.close()
    out.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return lines


def test_jsonl_export_verifies_and_detects_swaps_and_gaps(written_log: LogKeys, tmp_path: Path) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    assert verify_jsonl(out, keys).check().events == 20
    swapped = lines[:]
    swapped[4], swapped[5] = swapped[5], swapped[4]
    out.write_text("".join(json.dumps(d) + "\n" for d in swapped))
    res = verify_jsonl(out, keys)
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (5, "reordered")
    out.write_text("".join(json.dumps(d) + "\n" for d in lines[:4] + lines[5:]))
    res = verify_jsonl(out, keys)
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (5, "removed")
    out.write_text("".join(json.dumps(d) + "\n" for d in lines[:3]) + "{not json\n")
    res = verify_jsonl(out, keys)
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (4, "changed")


# --- attacks found by mutation testing (scripts/mutate.py)


@pytest.mark.parametrize("full", [True, False])
def test_an_intact_log_says_ok_and_names_its_keys(written_log: LogKeys, full: bool) -> None:
    db, keys = written_log
    res = verify_log(db, keys, all_signatures=full)
    assert res.ok is True and res.problem is None
    assert res.key_ids == sorted(keys)


def test_a_broken_export_is_not_ok(written_log: LogKeys, tmp_path: Path) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    out.write_text("{not json\n" + "".join(json.dumps(d) + "\n" for d in lines))
    res = verify_jsonl(out, keys)
    assert (
        res.ok is False and res.problem is not None and (res.problem.seq, res.problem.kind) == (1, "changed")
    )


def test_blank_lines_in_an_export_are_skipped_not_the_end(written_log: LogKeys, tmp_path: Path) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    out.write_text("".join(json.dumps(d) + "\n\n" for d in lines))
    res = verify_jsonl(out, keys).check()
    assert (res.ok, res.events, res.last_seq) == (True, 20, 20)


def test_an_export_cut_short_is_caught_by_an_anchor_given_with_it(
    written_log: LogKeys, tmp_path: Path
) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    conn = store.open_reader(db)
    anchor = store.read_anchor(conn)
    conn.close()
    assert anchor is not None and anchor.seq == 20
    out.write_text("".join(json.dumps(d) + "\n" for d in lines[:15]))
    assert verify_jsonl(out, keys).ok is True  # alone, a prefix is a valid chain
    res = verify_jsonl(out, keys, anchors=[anchor])
    assert (
        res.ok is False
        and res.problem is not None
        and (res.problem.seq, res.problem.kind) == (16, "truncated")
    )


def test_a_corrupt_checkpoint_file_fails_verification(written_log: LogKeys) -> None:
    db, keys = written_log
    store.checkpoint_path(db).write_text("{corrupt")
    assert _problem(db, keys)[1] == "anchor"  # an unreadable checkpoint counts as a forged one


def test_a_log_rebuilt_with_the_stolen_key_is_caught_by_an_anchor_kept_elsewhere(
    written_log: LogKeys, tmp_path: Path
) -> None:
    """The attacker holds the signing key and rewrites the whole log (valid chain, valid
    signatures, fresh in-database anchor and checkpoint); an anchor shipped off the host earlier
    records another head hash at seq 20."""
    db, keys = written_log
    conn = store.open_reader(db)
    shipped = store.read_anchor(conn)
    conn.close()
    assert shipped is not None and shipped.seq == 20
    from gateway.audit import AuditLog

    forged_db = tmp_path / "forged" / "audit.db"
    forged_db.parent.mkdir()
    key_file = db.parent / "audit-key.pem"
    log = AuditLog(forged_db, key_file, checkpoint_every=5)
    for i in range(1, 21):
        log.append("tool.call", {"tool": f"t{i}", "n": i, "rewritten": True}, principal="alice", agent="a1")
    log.close()
    assert verify_log(forged_db, keys).ok is True  # on its own the rewrite is perfect
    res = verify_log(forged_db, keys, extra_anchors=[shipped])
    assert (
        res.ok is False and res.problem is not None and (res.problem.seq, res.problem.kind) == (20, "anchor")
    )
    with pytest.raises(AuditIntegrityError):
        res.check()


def test_every_signature_is_checked_by_default(written_log: LogKeys, tmp_path: Path) -> None:
    db, keys = written_log
    assert verify_log(db, keys).signatures_checked == 20
    out = tmp_path / "export.jsonl"
    _export(db, out)
    assert verify_jsonl(out, keys).signatures_checked == 20


# --- group commits: one signature per batch (its last record), the records before it unsigned


@pytest.fixture
def batched_log(open_log: OpenLog, log_paths: LogPaths) -> LogKeys:
    """A closed 40-event log written in two group commits of 20 (emit, then flush)."""
    log = open_log(batch_max=20, checkpoint_every=1000)
    for i in range(1, 41):
        log.emit("tool.call", {"tool": f"t{i}", "n": i}, principal="alice", agent="a1")
    log.flush()
    log.close()
    return log_paths[0], exported_public_keys(log_paths[1])


def test_a_group_commit_signs_its_last_record_only(batched_log: LogKeys) -> None:
    db, keys = batched_log
    signed = [seq for seq in range(1, 41) if _row(db, seq)[9]]
    assert signed and signed[-1] == 40 and len(signed) < 40  # batches of up to 20: few signatures
    for full in (True, False):
        res = verify_log(db, keys, all_signatures=full).check()
        assert (res.events, res.last_seq) == (40, 40) and res.signatures_checked <= len(signed)


@pytest.mark.parametrize("full", [True, False])
def test_an_unsigned_record_edited_is_changed(batched_log: LogKeys, full: bool) -> None:
    db, keys = batched_log
    seq = next(s for s in range(1, 41) if not _row(db, s)[9])
    execute_sql(db, ("UPDATE events SET details = ? WHERE seq = ?", ('{"n":0,"tool":"innocent"}', seq)))
    assert _problem(db, keys, full=full) == (seq, "changed")


def test_unsigned_records_rewritten_and_rechained_fail_at_the_signature_that_vouched(
    batched_log: LogKeys,
) -> None:
    db, keys = batched_log
    # the attacker rewrites an unsigned record and re-chains everything after it (no key to sign)
    first = next(s for s in range(1, 41) if not _row(db, s)[9])
    vouching = next(s for s in range(first, 41) if _row(db, s)[9])
    conn = sqlite3.connect(db)
    prev = _row(db, first - 1)[8] if first > 1 else "0" * 64
    for seq in range(first, 41):
        r = list(_row(db, seq))
        if seq == first:
            r[6] = canonical_details({"tool": "nothing-to-see"})
        h = chain_hash(prev, AuditRecord._make([*r[:7], prev, "", "", r[10]]).canonical())
        conn.execute(
            "UPDATE events SET details=?, prev_hash=?, chain_hash=? WHERE seq=?", (r[6], prev, h, seq)
        )
        prev = h
    conn.commit()
    conn.close()
    assert _problem(db, keys, full=True) == (vouching, "changed")
    assert _problem(db, keys, full=False) == (vouching, "changed")


def test_an_export_ending_on_unsigned_records_is_truncated(batched_log: LogKeys, tmp_path: Path) -> None:
    db, keys = batched_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    cut = next(i for i, d in enumerate(lines) if not d["signature"])
    out.write_text("".join(json.dumps(d) + "\n" for d in lines[: cut + 1]))
    res = verify_jsonl(out, keys)
    assert res.problem is not None and res.problem.kind == "truncated" and res.problem.seq <= cut + 1
    assert verify_jsonl(out, keys, all_signatures=False).ok is False


def test_a_stripped_head_signature_is_caught(batched_log: LogKeys, tmp_path: Path) -> None:
    db, keys = batched_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    lines[-1]["signature"] = ""  # no signature left vouching for the batch
    out.write_text("".join(json.dumps(d) + "\n" for d in lines))
    res = verify_jsonl(out, keys)
    assert res.problem is not None and res.problem.kind == "truncated"


def test_a_rotation_event_without_its_signature_is_changed(
    open_log: OpenLog, log_paths: LogPaths, tmp_path: Path
) -> None:
    log = open_log()
    log.append("tool.call", {"n": 1})
    log.rotate_key()
    log.append("tool.call", {"n": 2})
    log.close()
    db, key_path = log_paths
    keys = exported_public_keys(key_path)
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    rot = next(i for i, d in enumerate(lines) if d["type"] == "audit.key_rotated")
    lines[rot]["signature"] = ""
    out.write_text("".join(json.dumps(d) + "\n" for d in lines))
    res = verify_jsonl(out, keys)
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (rot + 1, "changed")


@pytest.mark.parametrize("full", [True, False])
def test_swapped_unsigned_records_are_reordered(batched_log: LogKeys, full: bool) -> None:
    db, keys = batched_log
    a, b = _row(db, 3), _row(db, 4)
    assert not a[9] and not b[9]
    upd = (
        "UPDATE events SET id=?, ts_ns=?, principal=?, agent=?, type=?, details=?, prev_hash=?, chain_hash=?, "
        "signature=?, key_id=? WHERE seq=?"
    )
    execute_sql(db, (upd, (*b[1:], 3)), (upd, (*a[1:], 4)))
    assert _problem(db, keys, full=full) == (3, "reordered")


def test_a_deleted_unsigned_record_is_removed(batched_log: LogKeys) -> None:
    db, keys = batched_log
    execute_sql(db, ("DELETE FROM events WHERE seq = 3", ()))
    assert _problem(db, keys) == (3, "removed")


def test_an_export_with_floats_in_exponent_form_verifies(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "f.db", tmp_path / "fk.pem")
    for x in (1e-05, 1e16, 0.1, 123.456):
        log.append("tool.call", {"duration_ms": x, "nested": [x, {"v": x}]})
    log.append("tool.call", {"arg": "\ud800", "n": 1})  # cannot be UTF-8: kept as key names
    log.close()
    keys = exported_public_keys(tmp_path / "fk.pem")
    assert verify_log(tmp_path / "f.db", keys).check().events == 5
    conn = store.open_reader(tmp_path / "f.db")
    last = list(store.iter_records(conn))[-1]
    conn.close()
    assert last.details["keys"] == ["arg", "n"] and "unserialisable" in last.details
    out = tmp_path / "f.jsonl"
    _export(tmp_path / "f.db", out)
    assert verify_jsonl(out, keys).check().events == 5
