"""verify_records on chains built here with real Ed25519 keys (the attacker holds a key or
splices genuine records), and fast mode on real exports: each attack is reported at the
first bad sequence number with its kind (mutants of gateway/audit/verify.py survived these)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit import AuditRecord, exported_public_keys, store, verify_jsonl
from gateway.audit.record import (
    GENESIS_HASH,
    ROTATION_EVENT,
    anchor_message,
    canonical_details,
    chain_hash,
    key_id_of,
    public_pem,
    record_bytes,
    rotation_message,
    sign_hash,
)
from gateway.audit.verify import VerifyResult, verify_records
from tests.audit.conftest import LogKeys, LogPaths, OpenLog


def _kid(k: Ed25519PrivateKey) -> str:
    return key_id_of(k.public_key())


def _rec(
    seq: int,
    prev: str,
    key: Ed25519PrivateKey,
    *,
    signed: bool = True,
    type: str = "tool.call",
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    dj = canonical_details(details if details is not None else {"n": seq})
    kid = _kid(key)
    fields: dict[str, Any] = dict(
        seq=seq,
        id=f"r{seq}",
        ts_ns=seq,
        principal="alice",
        agent=None,
        type=type,
        details_json=dj,
        prev_hash=prev,
    )
    h = chain_hash(prev, record_bytes(**fields, key_id=kid))
    return AuditRecord(**fields, chain_hash=h, signature=sign_hash(key, h) if signed else "", key_id=kid)


def _chain(specs: list[tuple[Ed25519PrivateKey, bool]], prev: str = GENESIS_HASH) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    for seq, (key, signed) in enumerate(specs, 1):
        out.append(_rec(seq, prev, key, signed=signed))
        prev = out[-1].chain_hash
    return out


def _keys(*ks: Ed25519PrivateKey) -> dict[str, Ed25519PublicKey]:
    return {_kid(k): k.public_key() for k in ks}


def _anchor(key: Ed25519PrivateKey, seq: int, head: str) -> store.Anchor:
    sig = base64.b64encode(key.sign(anchor_message(seq, head))).decode("ascii")
    return store.Anchor(seq=seq, chain_hash=head, ts_ns=1, key_id=_kid(key), signature=sig)


def _problem(res: VerifyResult) -> tuple[object, str]:
    assert not res.ok and res.problem is not None
    return res.problem.seq, res.problem.kind


def _rotation_details(
    old: Ed25519PrivateKey, new: Ed25519PrivateKey, *, new_key_id: str | None = None, proof: bool = True
) -> dict[str, str]:
    """A rotation event's details from ``old`` to ``new`` (announcing ``new_key_id``, by default
    ``new``'s), with ``new``'s proof over the two ids unless ``proof`` is False."""
    new_id = _kid(new) if new_key_id is None else new_key_id
    details = {"old_key_id": _kid(old), "new_key_id": new_id, "new_public_key": public_pem(new.public_key())}
    if proof:
        details["proof"] = base64.b64encode(new.sign(rotation_message(_kid(old), new_id))).decode("ascii")
    return details


def test_a_signed_anchor_at_seq_1_with_another_head_hash_is_an_anchor_problem() -> None:
    k = Ed25519PrivateKey.generate()
    recs = _chain([(k, True)])
    assert verify_records(recs, _keys(k), anchors=[_anchor(k, 1, recs[0].chain_hash)]).ok
    # a one-record log rewritten with the stolen key, caught by an anchor of the original
    forged = _rec(1, GENESIS_HASH, k, details={"n": "forged"})
    assert _problem(verify_records([forged], _keys(k), anchors=[_anchor(k, 1, recs[0].chain_hash)])) == (
        1,
        "anchor",
    )


def test_a_genuine_record_spliced_after_another_chain_is_removed() -> None:
    """Right seq, intact content, but it follows a record this log does not have."""
    k = Ed25519PrivateKey.generate()
    mine = _chain([(k, True)] * 3)
    theirs = _chain([(k, True)] * 3, prev=chain_hash(GENESIS_HASH, b"another log"))
    res = verify_records([*mine[:2], theirs[2]], _keys(k))
    assert _problem(res) == (3, "removed")
    assert (res.last_seq, res.head_hash) == (2, mine[1].chain_hash)


def test_a_rotation_to_a_key_its_id_does_not_name_is_changed() -> None:
    """The old key signs a rotation whose new_key_id names a third key: no trust may move."""
    old, new, named = (Ed25519PrivateKey.generate() for _ in range(3))
    first = _rec(1, GENESIS_HASH, old)
    bad_id = _kid(named)
    details = _rotation_details(old, new, new_key_id=bad_id)
    rot = _rec(2, first.chain_hash, old, type=ROTATION_EVENT, details=details)
    res = verify_records([first, rot], _keys(old))
    assert _problem(res) == (2, "changed")
    assert res.last_seq == 1


def test_a_rotation_missing_its_proof_is_changed() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = _rec(1, GENESIS_HASH, old)
    details = _rotation_details(old, new, proof=False)
    rot = _rec(2, first.chain_hash, old, type=ROTATION_EVENT, details=details)
    assert _problem(verify_records([first, rot], _keys(old))) == (2, "changed")


@pytest.mark.parametrize("full", [True, False])
def test_unsigned_records_at_the_end_of_a_keys_run_are_truncated_there(full: bool) -> None:
    """Key A's run ends on an unsigned record and key B (also trusted) follows without a
    rotation: the first bad record is the unsigned one, not B's."""
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    recs = _chain([(a, True), (a, False), (b, True)])
    res = verify_records(recs, _keys(a, b), all_signatures=full)
    assert _problem(res) == (2, "truncated")


def test_a_damaged_signature_ending_a_keys_run_is_found_there_in_fast_mode() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    recs = _chain([(a, True), (a, True), (b, True)])
    recs[1] = recs[1]._replace(signature=sign_hash(b, recs[1].chain_hash))
    assert _problem(verify_records(recs, _keys(a, b), all_signatures=False)) == (2, "changed")


def test_unsigned_records_after_an_anchored_unsigned_record_are_truncated_from_the_first() -> None:
    k = Ed25519PrivateKey.generate()
    recs = _chain([(k, True), (k, False), (k, False), (k, False)])
    res = verify_records(recs, _keys(k), anchors=[_anchor(k, 2, recs[1].chain_hash)])
    assert _problem(res) == (3, "truncated")


def test_a_record_whose_seq_was_raised_in_place_is_removed_at_the_missing_seq() -> None:
    k = Ed25519PrivateKey.generate()
    recs = _chain([(k, True)] * 3)
    recs[1] = recs[1]._replace(seq=5)  # same place, same link, seq edited
    res = verify_records(recs, _keys(k))
    assert _problem(res) == (2, "removed")
    assert res.last_seq == 1


def test_a_changed_record_reports_the_last_good_seq_and_head() -> None:
    k = Ed25519PrivateKey.generate()
    recs = _chain([(k, True)] * 4)
    recs[2] = recs[2]._replace(details_json=canonical_details({"n": "edited"}))
    res = verify_records(recs, _keys(k))
    assert _problem(res) == (3, "changed")
    assert (res.last_seq, res.head_hash) == (2, recs[1].chain_hash)


# --- fast mode on real exports


def _export(db: Path, out: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(db)
    lines = [r.as_dict() for r in store.iter_records(conn)]
    conn.close()
    out.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return lines


def _write(out: Path, lines: list[dict[str, Any]]) -> None:
    out.write_text("".join(json.dumps(d) + "\n" for d in lines))


def test_fast_mode_on_an_export_checks_the_head_signature_only(written_log: LogKeys, tmp_path: Path) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    res = verify_jsonl(out, keys, all_signatures=False).check()
    assert (res.events, res.signatures_checked) == (20, 1)
    assert verify_jsonl(out, keys).check().signatures_checked == 20
    # the head's signature replaced by another key's: nothing else vouches for the export
    forger = Ed25519PrivateKey.generate()
    lines[-1]["signature"] = sign_hash(forger, lines[-1]["chain_hash"])
    _write(out, lines)
    res = verify_jsonl(out, keys, all_signatures=False)
    assert _problem(res) == (20, "changed")


def test_fast_and_full_mode_across_a_key_rotation(
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
    assert any(d["type"] == ROTATION_EVENT for d in lines) and all(d["signature"] for d in lines)
    full = verify_jsonl(out, keys).check()
    assert full.signatures_checked == full.events == len(lines)
    fast = verify_jsonl(out, keys, all_signatures=False).check()
    assert fast.events == len(lines) and len(fast.key_ids) == 2


def test_an_export_with_a_record_moved_and_renumbered_is_reordered(
    written_log: LogKeys, tmp_path: Path
) -> None:
    db, keys = written_log
    out = tmp_path / "export.jsonl"
    lines = _export(db, out)
    lines[3], lines[4] = lines[4], lines[3]
    lines[3]["seq"], lines[4]["seq"] = 4, 5  # renumbered to hide the move
    _write(out, lines)
    assert _problem(verify_jsonl(out, keys)) == (4, "reordered")


@pytest.mark.parametrize("full", [True, False])
def test_a_trusted_key_taking_over_without_a_rotation_is_inserted(full: bool) -> None:
    """Both keys are trusted, but only a rotation event makes B the key that signs next."""
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    recs = _chain([(a, True), (a, True), (b, True)])
    assert _problem(verify_records(recs, _keys(a, b), all_signatures=full)) == (3, "inserted")


@pytest.mark.parametrize("full", [True, False])
def test_an_unsigned_first_record_of_an_untrusted_key_is_inserted_at_once(full: bool) -> None:
    a, c = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    recs = _chain([(c, False), (c, True)])
    assert _problem(verify_records(recs, _keys(a), all_signatures=full)) == (1, "inserted")


def test_a_log_ending_on_its_rotation_checks_that_signature_once_in_fast_mode() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = _rec(1, GENESIS_HASH, old)
    details = _rotation_details(old, new)
    rot = _rec(2, first.chain_hash, old, type=ROTATION_EVENT, details=details)
    fast = verify_records([first, rot], _keys(old), all_signatures=False).check()
    full = verify_records([first, rot], _keys(old)).check()
    assert (fast.signatures_checked, full.signatures_checked) == (1, 2)
    assert fast.key_ids == full.key_ids == sorted(_keys(old, new))
