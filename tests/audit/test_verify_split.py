"""Verification over several processes (``verify_log(jobs=N)``, ``gateway.audit.verify_split``):
the same result as one process, intact and tampered, with tampers on the ranges' edges."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import AuditLog, exported_public_keys, store, verify_log
from gateway.audit.record import ROTATION_EVENT
from gateway.audit.verify_split import (
    PARALLEL_MIN_EVENTS,
    job_count,
    seq_ranges,
    start_method,
)
from gateway.errors import ConfigError
from tests.audit.conftest import Keys, execute_sql

UPD = (
    "UPDATE events SET id=?, ts_ns=?, principal=?, agent=?, type=?, details=?, prev_hash=?, chain_hash=?, "
    "signature=?, key_id=? WHERE seq=?"
)


def _rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    rows = conn.execute(f"SELECT {store.COLUMNS} FROM events ORDER BY seq").fetchall()
    conn.close()
    return rows


def _emit(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.emit("tool.call", {"tool": f"t{i}", "n": i}, principal="alice", agent="a1")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys, int]:
    """A closed log of group commits (unsigned runs, signed heads, anchors) with a key rotation
    that is the last record of the first of 2 ranges; the keys passed are the first key only
    (the second is trusted through the rotation). Returns the data dir, keys, the rotation seq."""
    d = tmp_path_factory.mktemp("split")
    log = AuditLog(d / "audit.db", d / "key.pem", batch_max=6, checkpoint_every=1000)
    keys = exported_public_keys(d / "key.pem")
    _emit(log, 13)
    log.flush()
    log.rotate_key()
    log.flush()
    rows = _rows(d / "audit.db")
    rot = next(r[0] for r in rows if r[5] == ROTATION_EVENT)
    left = rot - 1 - (len(rows) - rot)
    while left > 0:  # the new key's run: a few group commits, each signed at its end
        _emit(log, min(4, left))
        log.flush()
        left -= 4
    log.close()
    assert len(_rows(d / "audit.db")) == 2 * rot - 1 and seq_ranges(1, 2 * rot - 1, 2)[0] == (1, rot)
    return d, keys, rot


@pytest.fixture
def log_copy(pristine: tuple[Path, Keys, int], tmp_path: Path) -> tuple[Path, Keys, int]:
    d, keys, rot = pristine
    shutil.copytree(d, tmp_path / "d")
    return tmp_path / "d" / "audit.db", keys, rot


def _same(db: Path, keys: Keys, jobs: int, full: bool = True) -> tuple[int, str] | None:
    """Verify in one process and in ``jobs``: the same result; the first problem, if any."""
    one = verify_log(db, keys, all_signatures=full, jobs=1)
    split = verify_log(db, keys, all_signatures=full, jobs=jobs)
    # ranges go to a pool of jobs - 1 workers, whichever is free: at least two processes; a
    # log of one seq or none has nothing to split
    ranges = min(jobs, max((r[0] for r in _rows(db)), default=0))
    assert one.worker_pids == () and len(split.worker_pids) == (ranges if ranges > 1 else 0)
    assert len(set(split.worker_pids)) >= min(ranges, 2)
    assert ranges < 2 or os.getpid() in split.worker_pids  # this process takes the first range
    assert {**split.as_dict(), "worker_pids": []} == one.as_dict()
    return None if one.problem is None else (one.problem.seq, one.problem.kind)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("jobs", [2, 3, 5])
def test_an_intact_log_gives_the_same_result_in_several_processes(
    log_copy: tuple[Path, Keys, int], jobs: int, full: bool
) -> None:
    db, keys, rot = log_copy
    assert _same(db, keys, jobs, full) is None
    res = verify_log(db, keys, all_signatures=full, jobs=jobs)
    assert res.ok and res.events == 2 * rot - 1 and len(res.key_ids) == 2
    signed = sum(1 for r in _rows(db) if r[9])
    assert res.signatures_checked == signed if full else res.signatures_checked <= signed


def _edges(db: Path, jobs: int) -> list[int]:
    """The first and last seq of every range ``jobs`` processes take."""
    head = len(_rows(db))
    return sorted({s for lo, hi in seq_ranges(1, head, jobs) for s in (lo, hi)})


def _edit(db: Path, seq: int) -> None:
    execute_sql(db, ("UPDATE events SET details = ? WHERE seq = ?", ('{"n":0,"tool":"innocent"}', seq)))


def _delete(db: Path, seq: int) -> None:
    execute_sql(db, ("DELETE FROM events WHERE seq = ?", (seq,)))


def _swap_with_next(db: Path, seq: int) -> None:
    rows = {r[0]: r for r in _rows(db)}
    if seq + 1 in rows:
        execute_sql(db, (UPD, (*rows[seq + 1][1:], seq)), (UPD, (*rows[seq][1:], seq + 1)))


def _foreign_signature(db: Path, seq: int) -> None:
    """The signature of another record of the same key: valid, but not over this hash."""
    rows = _rows(db)
    mine = rows[seq - 1]
    other = next(r for r in rows if r[9] and r[0] != seq and r[10] == mine[10])
    execute_sql(db, ("UPDATE events SET signature = ? WHERE seq = ?", (other[9], seq)))


def _strip_signature(db: Path, seq: int) -> None:
    execute_sql(db, ("UPDATE events SET signature = '' WHERE seq = ?", (seq,)))


def _truncate_from(db: Path, seq: int) -> None:
    execute_sql(db, ("DELETE FROM events WHERE seq >= ?", (seq,)))


def _move_before_chain(db: Path, seq: int) -> None:
    """A genuine record copied to seq 0 (the first range also reads below itself)."""
    row = _rows(db)[seq - 1]
    execute_sql(db, (f"INSERT INTO events ({store.COLUMNS}) VALUES ({','.join('?' * 11)})", (0, *row[1:])))


TAMPERS: dict[str, Callable[[Path, int], None]] = {
    "edit": _edit,
    "delete": _delete,
    "swap": _swap_with_next,
    "foreign_signature": _foreign_signature,
    "strip_signature": _strip_signature,
    "truncate": _truncate_from,
    "seq_zero": _move_before_chain,
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
@pytest.mark.parametrize("jobs", [2, 3])
def test_a_tamper_on_a_range_edge_is_the_same_first_problem(
    pristine: tuple[Path, Keys, int], tmp_path: Path, tamper: str, jobs: int
) -> None:
    d, keys, _ = pristine
    for seq in _edges(d / "audit.db", jobs):
        copy = tmp_path / f"{seq}"
        shutil.copytree(d, copy)
        TAMPERS[tamper](copy / "audit.db", seq)
        if _rows(copy / "audit.db") == _rows(d / "audit.db"):
            continue  # nothing to swap with after the last record
        problem = _same(copy / "audit.db", keys, jobs)
        # a stripped signature is vouched for by the next signature or an anchor: not a problem
        assert problem is not None or tamper == "strip_signature", (tamper, seq)
        if tamper in ("edit", "foreign_signature"):
            assert problem == (seq, "changed")
        # fast mode may pass a damaged signature on an intact record; otherwise the same
        _same(copy / "audit.db", keys, jobs, full=False)


def test_the_rotation_on_a_range_edge_hands_trust_to_the_next_range(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, rot = log_copy
    rows = _rows(db)
    assert rows[rot - 1][10] != rows[rot][10]  # range 2 starts with the new key's first record
    assert _same(db, keys, 2) is None
    # the record after the rotation signed on by the old key: not the trusted current key
    old = rows[rot - 1]
    execute_sql(db, ("UPDATE events SET key_id = ? WHERE seq = ?", (old[10], rot + 1)))
    assert _same(db, keys, 2) == (rot + 1, "changed")


def test_a_rotation_edited_in_the_second_range_is_changed(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, rot = log_copy
    _edit(db, rot)
    assert _same(db, keys, 3) == (rot, "changed")


def test_only_the_new_key_without_the_rotation_is_inserted(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, rot = log_copy
    new = exported_public_keys(db.parent / "key.pem")
    only_new = {k: v for k, v in new.items() if k not in keys}
    assert only_new
    assert _same(db, only_new, 2) == (1, "inserted")


def test_an_anchor_problem_is_the_same(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, _ = log_copy
    conn = sqlite3.connect(db)
    (seq,) = conn.execute("SELECT seq FROM anchor").fetchone()
    conn.close()
    execute_sql(db, ("UPDATE anchor SET signature = ?", ("AAAA",)))
    assert _same(db, keys, 2) == (seq, "anchor")


def test_a_log_being_written_is_read_up_to_the_head_taken_at_the_start(tmp_path: Path) -> None:
    """Threads run (the writer's): the workers fork from a forkserver, and what is appended
    while they verify is not read."""
    log = AuditLog(tmp_path / "w.db", tmp_path / "wk.pem", batch_max=16, checkpoint_every=1000)
    keys = exported_public_keys(tmp_path / "wk.pem")
    _emit(log, 200)
    log.flush()
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            _emit(log, 20)
            log.flush()

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert start_method() == "forkserver"
        seen = [verify_log(tmp_path / "w.db", keys, jobs=2) for _ in range(3)]
    finally:
        stop.set()
        t.join()
        log.close()
    for res in seen:
        assert res.ok and len(set(res.worker_pids)) == 2 and res.events == res.last_seq >= 200
    assert verify_log(tmp_path / "w.db", keys, jobs=2).check().last_seq >= seen[-1].last_seq


def _forkservers() -> set[int]:
    """This process's children that run multiprocessing's fork server."""
    out = set()
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"multiprocessing.forkserver" in (proc / "cmdline").read_bytes():
                out.add(int(proc.name))
        except (OSError, ValueError, IndexError):  # not a process, or it ended meanwhile
            continue
    return out


def test_verifications_in_one_process_share_its_forkserver(
    log_copy: tuple[Path, dict[str, Ed25519PublicKey], int],
) -> None:
    """``symbi serve`` verifies on each ``/api/audit/verify`` with threads running: every
    verification's ranges go to workers forked from the one fork server the process starts
    at its first (its ~0.5 s start-up paid once), each result the serial walk's."""
    db, keys, _ = log_copy
    serial = verify_log(db, keys, jobs=1).as_dict()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert start_method() == "forkserver"
        first = verify_log(db, keys, jobs=2)
        servers = _forkservers()
        second = verify_log(db, keys, jobs=2)
        assert len(servers) == 1 and _forkservers() == servers
    finally:
        stop.set()
        t.join()
    for res in (first, second):
        assert len(set(res.worker_pids)) == 2 and {**res.as_dict(), "worker_pids": []} == serial


def test_one_thread_forks(tmp_path: Path) -> None:
    assert threading.active_count() > 1 or start_method() == "fork"


def test_a_small_log_stays_in_one_process_unless_jobs_are_given(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, _ = log_copy
    assert len(_rows(db)) < PARALLEL_MIN_EVENTS
    assert verify_log(db, keys).check().worker_pids == ()
    assert len(set(verify_log(db, keys, jobs=2).check().worker_pids)) == 2


def test_more_jobs_than_records_use_one_process_per_record(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, _ = log_copy
    _truncate_from(db, 3)
    res = verify_log(db, keys, jobs=8)
    assert res.problem is not None and len(set(res.worker_pids)) == 2
    assert res.problem == verify_log(db, keys, jobs=1).problem


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_jobs_are_a_config_error(log_copy: tuple[Path, Keys, int], bad: object) -> None:
    db, keys, _ = log_copy
    with pytest.raises(ConfigError):
        verify_log(db, keys, jobs=bad)  # type: ignore[arg-type]


def test_jobs_default_to_the_cores() -> None:
    assert job_count(None) == len(os.sched_getaffinity(0))
    assert job_count(3) == 3


@pytest.mark.parametrize(
    ("first", "head", "n"), [(1, 10, 2), (1, 11, 2), (5, 17, 4), (1, 3, 3), (1, 100_000, 7)]
)
def test_seq_ranges_cover_every_seq_once_in_order(first: int, head: int, n: int) -> None:
    ranges = seq_ranges(first, head, n)
    assert len(ranges) == n and ranges[0][0] == first and ranges[-1][1] == head
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    sizes = [hi - lo + 1 for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_key_missing_from_the_keys_table_falls_back_to_one_process(
    log_copy: tuple[Path, Keys, int],
) -> None:
    """The rotated-to key is a candidate through the log's keys table; without it, the range
    that needs it fails and the serial walk (trusting it through the rotation) says intact."""
    db, keys, _ = log_copy
    (old,) = keys
    execute_sql(db, ("DELETE FROM keys WHERE key_id != ?", (old,)))
    res = verify_log(db, keys, jobs=2).check()
    assert len(set(res.worker_pids)) == 2 and res.as_dict() == {
        **verify_log(db, keys, jobs=1).as_dict(),
        "worker_pids": list(res.worker_pids),
    }


def test_a_key_id_given_with_another_key_is_left_to_one_process(log_copy: tuple[Path, Keys, int]) -> None:
    db, keys, _ = log_copy
    (old,) = keys.values()
    new_id = next(k for k in exported_public_keys(db.parent / "key.pem") if k not in keys)
    res = verify_log(db, {**keys, new_id: old}, jobs=2)
    assert res.worker_pids == () and res.problem == verify_log(db, {**keys, new_id: old}, jobs=1).problem
