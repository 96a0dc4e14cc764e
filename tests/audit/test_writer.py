"""The writer's head signatures: a batch is acknowledged once it and its signed head anchor are
committed (the one signature before the acknowledgement). A head record is signed when the
writer goes idle, is flushed or closed, and once per ``checkpoint_every`` events, after the
acknowledgement, the signature stored by a later transaction. Meanwhile the anchor vouches for
the unsigned records, a crash leaves a log that verifies, and every tampering with such records
is still caught."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys, store, verify_log
from gateway.audit.record import verify_hash_signature
from gateway.audit.store import checkpoint_path
from tests.audit.conftest import Keys, LogKeys, LogPaths


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


def test_a_record_is_acknowledged_under_its_anchor_and_its_head_signed_when_flushed(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
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
    # one signature per call, the anchor's: the anchor on 2 vouches for 1 and 2
    assert (sig1, sig2) == ("", "") and _anchor_seq(db) == 2
    assert log.verify().check().last_seq == 2

    log.flush()  # a flush returns with the head signed
    (_, _, sig1), (_, _, sig2) = _rows(db)
    assert sig1 == "" and verify_hash_signature(pub, h2, sig2)
    log.close()
    res = verify_log(db, exported_public_keys(log_paths[1])).check()
    assert (res.events, res.signatures_checked) == (2, 1)


def test_back_to_back_records_get_a_signed_head_every_checkpoint_every_events(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """The writer never idles: the head is signed once per ``checkpoint_every`` events, after
    that commit's acknowledgement, and the signature stored by the next commit."""
    db, key = log_paths
    log = open_log(seal_idle_s=30.0, checkpoint_every=10)
    for i in range(1, 26):
        assert log.append("tool.call", {"n": i}, principal="p") == i
    signed = [seq for seq, _, sig in _rows(db) if sig]
    assert signed == [10, 20]
    assert log.verify().check().last_seq == 25  # 21..25: the anchor on 25 vouches for them
    log.close()
    assert [seq for seq, _, sig in _rows(db) if sig] == [10, 20, 25]  # close signs the head
    res = verify_log(db, exported_public_keys(key)).check()
    assert (res.events, res.signatures_checked) == (25, 3)


def test_an_idle_writer_signs_the_head_on_its_own(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
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
def unsigned_head(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> LogKeys:
    """A closed 5-event log left as a crash between two commits leaves it: the head's signature
    not stored yet, the in-database anchor and the checkpoint file on the head."""
    db, key = log_paths
    log = open_log(checkpoint_every=1000)
    for i in range(1, 6):
        log.append("tool.call", {"n": i}, principal="p")
        log.flush()  # 1..4 signed: the head is the only unsigned record
    log.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE events SET signature = '' WHERE seq = 5")
    conn.close()
    assert _anchor_seq(db) == 5
    return db, exported_public_keys(key)


def _problem(db: Path, keys: Keys, *sql: str) -> tuple[int, str] | None:
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


def test_an_unsigned_head_under_its_anchor_verifies(unsigned_head: LogKeys) -> None:
    assert _problem(*unsigned_head) is None


def test_an_unsigned_head_removed_is_truncated(unsigned_head: LogKeys) -> None:
    assert _problem(*unsigned_head, "DELETE FROM events WHERE seq = 5") == (5, "truncated")


def test_an_unsigned_head_removed_with_its_anchor_is_truncated(unsigned_head: LogKeys) -> None:
    db, _ = unsigned_head
    assert _problem(*unsigned_head, "DELETE FROM events WHERE seq = 5", "DELETE FROM anchor") == (
        5,
        "truncated",
    )
    checkpoint_path(db).unlink()  # and the checkpoint file: no anchor at all is left
    assert _problem(*unsigned_head)[1] == "truncated"  # type: ignore[index]


def test_an_unsigned_head_edited_is_changed(unsigned_head: LogKeys) -> None:
    assert _problem(*unsigned_head, """UPDATE events SET details = '{"n":0}' WHERE seq = 5""") == (
        5,
        "changed",
    )


def test_an_unsigned_head_given_a_foreign_signature_is_changed(
    unsigned_head: LogKeys, tmp_path: Path
) -> None:
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
    open_log: Callable[..., AuditLog], log_paths: LogPaths, monkeypatch: pytest.MonkeyPatch
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


# --- a crash after back-to-back records: a run of unsigned records under the anchor alone


@pytest.fixture
def unsigned_run(open_log: Callable[..., AuditLog], log_paths: LogPaths, tmp_path: Path) -> LogKeys:
    """What a crash leaves after 8 back-to-back appends: every record committed and unsigned, the
    in-database anchor on the head (no checkpoint file yet). A copy of the live log made with
    SQLite's backup API: exactly what is committed, as a crash at that moment would leave it."""
    db, key = log_paths
    log = open_log(seal_idle_s=30.0, checkpoint_every=1000)
    for i in range(1, 9):
        assert log.append("tool.call", {"n": i}, principal="p") == i
    crashed = tmp_path / "crashed" / "audit.db"
    crashed.parent.mkdir()
    src, dst = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(crashed)
    src.backup(dst)
    src.close()
    dst.close()
    assert [sig for _, _, sig in _rows(crashed)] == [""] * 8 and _anchor_seq(crashed) == 8
    return crashed, exported_public_keys(key)


def test_a_crash_after_back_to_back_records_leaves_a_log_that_verifies_and_continues(
    unsigned_run: LogKeys, log_paths: LogPaths
) -> None:
    db, keys = unsigned_run
    assert _problem(db, keys) is None
    log = AuditLog(db, log_paths[1])  # a new writer (same key) continues the chain
    try:
        assert log.append("gateway.start", {"after": "crash"}) == 9
    finally:
        log.close()
    res = verify_log(db, keys).check()
    assert (res.events, res.signatures_checked) == (9, 1)


def _swap(a: int, b: int) -> list[str]:
    """Records ``a`` and ``b`` trade places (each keeps its content, hashes and signature)."""
    return [
        f"UPDATE events SET seq = -1 WHERE seq = {a}",
        f"UPDATE events SET seq = {a} WHERE seq = {b}",
        f"UPDATE events SET seq = {b} WHERE seq = -1",
    ]


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        (["""UPDATE events SET details = '{"n":0}' WHERE seq = 4"""], (4, "changed")),
        (["""UPDATE events SET principal = 'q' WHERE seq = 8"""], (8, "changed")),
        (["DELETE FROM events WHERE seq = 4"], (4, "removed")),
        (_swap(3, 4), (3, "reordered")),
        (["DELETE FROM events WHERE seq > 6"], (1, "truncated")),
        (["DELETE FROM events WHERE seq > 6", "DELETE FROM anchor"], (1, "truncated")),
        (["DELETE FROM anchor"], (1, "truncated")),
    ],
    ids=["edit", "edit-head", "delete", "reorder", "truncate", "truncate-and-anchor", "anchor-deleted"],
)
def test_every_tampering_with_an_unsigned_run_is_caught(
    unsigned_run: LogKeys, attack: list[str], expected: tuple[int, str]
) -> None:
    assert _problem(*unsigned_run, *attack) == expected


def test_a_record_inserted_into_an_unsigned_run_is_caught(unsigned_run: LogKeys) -> None:
    """A forger without the key inserts a record at 5 and re-chains 5..9 (he cannot re-sign the
    anchor): the anchor's head hash is no longer in the log."""
    from gateway.audit.record import AuditRecord, canonical_details, chain_hash

    db, keys = unsigned_run
    conn = sqlite3.connect(db)
    rows = [list(r) for r in conn.execute(f"SELECT {store.COLUMNS} FROM events ORDER BY seq")]
    kid = rows[0][10]
    forged = [5, "forged", 1, "p", None, "tool.call", canonical_details({"n": "forged"}), "", "", "", kid]
    rows = rows[:4] + [forged] + rows[4:]
    prev = rows[3][8]
    for seq, r in enumerate(rows[4:], start=5):
        r[0], r[7] = seq, prev
        r[8] = chain_hash(prev, AuditRecord(*r).canonical())
        prev = r[8]
    with conn:
        conn.execute("DELETE FROM events WHERE seq >= 5")
        conn.executemany(f"INSERT INTO events ({store.COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows[4:])
    conn.close()
    # 9 is past the anchor and unsigned: nothing vouches for it (and the anchor's hash is gone)
    assert _problem(db, keys) == (9, "truncated")


def test_an_anchor_re_signed_by_another_key_over_an_unsigned_run_is_caught(unsigned_run: LogKeys) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.audit.record import anchor_message

    db, keys = unsigned_run
    conn = sqlite3.connect(db)
    seq, head = conn.execute("SELECT seq, chain_hash FROM anchor").fetchone()
    conn.close()
    forged = base64.b64encode(Ed25519PrivateKey.generate().sign(anchor_message(seq, head))).decode()
    assert _problem(*unsigned_run, f"UPDATE anchor SET signature = '{forged}'") == (8, "anchor")


def _outside_write_lock(db: Path) -> bool:
    """True when an outside connection gets the log's write lock at once (no busy wait)."""
    conn = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # database is locked
        return False
    finally:
        conn.close()


def _eventually(check: Callable[[], bool], deadline_s: float = 10.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_the_next_commit_is_opened_ahead_and_its_events_commit_in_it(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """While the writer waits for the next event (up to ``seal_idle_s``) its write transaction is
    already open: the write lock is the writer's, and the next events commit in that transaction."""
    db, _ = log_paths
    log = open_log(seal_idle_s=30.0)
    assert log.append("tool.call", {"n": 1}) == 1
    assert _eventually(lambda: not _outside_write_lock(db))  # opened ahead after the commit
    assert [log.append("tool.call", {"n": n}) for n in (2, 3)] == [2, 3]
    assert [r[0] for r in _rows(db)] == [1, 2, 3] and _anchor_seq(db) == 3
    assert log.rotate_key() != ""  # a control item runs with no transaction left open
    assert log.append("tool.call", {"n": 5}) == 5
    log.close()
    assert _outside_write_lock(db)
    assert verify_log(db, exported_public_keys(log_paths[1])).check().last_seq == 5


def test_an_idle_writer_holds_no_lock(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> None:
    """After ``seal_idle_s`` without an event the transaction opened ahead is rolled back: an
    idle log holds no write lock (only the writer writes it, but nothing is held for nothing)."""
    db, _ = log_paths
    log = open_log(seal_idle_s=0.05)
    assert log.append("tool.call", {"n": 1}) == 1
    log.flush()  # the head signed now: the idle writer has nothing to seal, only a lock to let go
    assert _eventually(lambda: _outside_write_lock(db))
    assert log.append("tool.call", {"n": 2}) == 2  # and the next event begins its own
    assert [r[0] for r in _rows(db)] == [1, 2]


def test_a_wall_clock_that_steps_back_leaves_times_in_seq_order_and_windows_exact(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock steps back (NTP, a VM restored) during a run and again after a restart:
    no record is stamped before the one before it, so a query's time window (a seq range in a
    log without the ts index) holds exactly the records stamped inside it, and the log verifies."""
    import types

    import gateway.audit.batch as batch_module  # where a caller's event gets its time

    clock = iter([1_000, 2_000, 3_000, 1_500, 2_500, 2_000, 4_000, 3_500, 5_000, 6_000])
    monkeypatch.setattr(batch_module, "time", types.SimpleNamespace(time_ns=lambda: next(clock)))
    log = open_log()
    for i in range(5):
        log.append("tool.call", {"i": i})
    log.close()
    log = open_log()  # a new writer starts from the head's time
    for i in range(5, 10):
        log.append("tool.call", {"i": i})
    log.close()
    conn = store.open_reader(log_paths[0])
    stamps = [r.ts_ns for r in store.iter_records(conn)]
    assert stamps == [1_000, 2_000, 3_000, 3_000, 3_000, 3_000, 4_000, 4_000, 5_000, 6_000]
    assert not store.has_ts_index(conn)
    for since, until in [
        (None, 3_000),
        (3_000, None),
        (3_000, 4_001),
        (2_500, 5_000),
        (5_000, 5_001),
        (7_000, None),
        (3_000, 3_001),
    ]:
        got = [r.seq for r in store.query(conn, since_ns=since, until_ns=until)]
        assert got == [
            s
            for s, ts in enumerate(stamps, 1)
            if (since is None or ts >= since) and (until is None or ts < until)
        ]
    conn.close()
    assert verify_log(log_paths[0], exported_public_keys(log_paths[1])).ok
