"""The writer's deferred head signature: a batch is acknowledged once it and its signed head
anchor are committed; the batch's last record is signed after that and its signature stored by
the next transaction (or when the writer is idle). Meanwhile the anchor vouches for it, and
every tampering with such a head is still caught."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys, store, verify_log
from gateway.audit.record import verify_hash_signature
from gateway.audit.store import checkpoint_path


def _rows(db: Path) -> list[tuple[int, str, str]]:
    """(seq, chain hash, signature) of every record, and nothing cached: a fresh connection."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.execute("SELECT seq, chain_hash, signature FROM events ORDER BY seq"))
    finally:
        conn.close()


def _anchor_seq(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT seq FROM anchor").fetchone()[0])
    finally:
        conn.close()


def test_a_record_is_acknowledged_under_its_anchor_and_signed_by_the_next_commit(
    open_log: Callable[..., AuditLog], log_paths
) -> None:
    db, _ = log_paths
    log = open_log(seal_idle_s=30.0)  # no idle signing during the test
    pub = log.public_key
    assert asyncio.run(log.record("tool.call", {"n": 1}, principal="p")) == 1
    ((seq, h1, sig1),) = _rows(db)
    assert (seq, sig1) == (1, "") and _anchor_seq(db) == 1
    assert log.verify().check().last_seq == 1  # the signed anchor vouches for the unsigned head

    assert log.append("tool.call", {"n": 2}, principal="p") == 2
    (_, _, sig1), (_, h2, sig2) = _rows(db)
    assert verify_hash_signature(pub, h1, sig1)  # stored in the second batch's transaction
    assert sig2 == "" and _anchor_seq(db) == 2

    log.flush()  # a flush returns with every head signed
    assert verify_hash_signature(pub, h2, _rows(db)[1][2])
    log.close()
    res = verify_log(db, exported_public_keys(log_paths[1])).check()
    assert (res.events, res.signatures_checked) == (2, 2)


def test_an_idle_writer_signs_the_head_on_its_own(open_log: Callable[..., AuditLog], log_paths) -> None:
    db, _ = log_paths
    log = open_log(seal_idle_s=0.0)  # idle at once: no later event comes
    assert log.append("tool.call", {"n": 1}, principal="p") == 1
    signed = asyncio.run(_wait_signed(db))
    assert signed, "the idle writer never stored the head's signature"
    assert verify_hash_signature(log.public_key, _rows(db)[0][1], _rows(db)[0][2])


async def _wait_signed(db: Path) -> bool:
    for _ in range(1000):  # bounded: 20 s
        if _rows(db)[0][2]:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
def unsigned_head(open_log: Callable[..., AuditLog], log_paths) -> tuple[Path, dict]:
    """A closed 5-event log left as a crash between two commits leaves it: the head's signature
    not stored yet, the in-database anchor and the checkpoint file on the head."""
    db, key = log_paths
    log = open_log(checkpoint_every=1000)
    for i in range(1, 6):
        log.append("tool.call", {"n": i}, principal="p")
    log.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET signature = '' WHERE seq = 5")
    conn.close()
    assert _anchor_seq(db) == 5
    return db, exported_public_keys(key)


def _problem(db: Path, keys: dict, *sql: str) -> tuple[int, str] | None:
    conn = sqlite3.connect(db)
    with conn:
        for s in sql:
            conn.execute(s)
    conn.close()
    for full in (True, False):
        res = verify_log(db, keys, all_signatures=full)
        if full:
            first = None if res.problem is None else (res.problem.seq, res.problem.kind)
        else:
            assert (None if res.problem is None else (res.problem.seq, res.problem.kind)) == first
    return first


def test_an_unsigned_head_under_its_anchor_verifies(unsigned_head) -> None:
    assert _problem(*unsigned_head) is None


def test_an_unsigned_head_removed_is_truncated(unsigned_head) -> None:
    assert _problem(*unsigned_head, "DELETE FROM events WHERE seq = 5") == (5, "truncated")


def test_an_unsigned_head_removed_with_its_anchor_is_truncated(unsigned_head) -> None:
    db, _ = unsigned_head
    assert _problem(*unsigned_head, "DELETE FROM events WHERE seq = 5", "DELETE FROM anchor") == (
        5,
        "truncated",
    )
    checkpoint_path(db).unlink()  # and the checkpoint file: no anchor at all is left
    assert _problem(*unsigned_head)[1] == "truncated"  # type: ignore[index]


def test_an_unsigned_head_edited_is_changed(unsigned_head) -> None:
    assert _problem(*unsigned_head, """UPDATE events SET details = '{"n":0}' WHERE seq = 5""") == (
        5,
        "changed",
    )


def test_an_unsigned_head_given_a_foreign_signature_is_changed(unsigned_head, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.audit.record import sign_hash

    db, _ = unsigned_head
    h = _rows(db)[4][1]
    forged = sign_hash(Ed25519PrivateKey.generate(), h)
    assert _problem(*unsigned_head, f"UPDATE events SET signature = '{forged}' WHERE seq = 5") == (
        5,
        "changed",
    )


def test_a_verification_racing_a_commit_reads_the_anchor_and_records_of_one_snapshot(
    open_log: Callable[..., AuditLog], log_paths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit lands between the verifier's reading of the anchor and of the records: it stores
    the old head's signature and moves the anchor to a new, unsigned head. Records of the later
    state under the earlier anchor would end on an unsigned record nothing vouches for."""
    db, key = log_paths
    log = open_log(seal_idle_s=30.0)
    log.append("tool.call", {"n": 1}, principal="p")
    real = store.read_anchor

    def read_anchor_then_commit(conn: sqlite3.Connection) -> store.Anchor | None:
        anchor = real(conn)
        if anchor is not None and anchor.seq == 1:
            assert log.append("tool.call", {"n": 2}, principal="p") == 2
        return anchor

    monkeypatch.setattr(store, "read_anchor", read_anchor_then_commit)
    res = verify_log(db, exported_public_keys(key)).check()
    assert res.last_seq == 1  # the snapshot of the anchor it read
    monkeypatch.undo()
    assert verify_log(db, exported_public_keys(key)).check().last_seq == 2
