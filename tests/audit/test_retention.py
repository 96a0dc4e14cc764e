"""Retention: old events leave the live log into sealed segments behind a signed hand-off,
and verification still proves everything: the live chain from its hand-off, each segment on
its own, and that segments and hand-off join up. Each attack is found where it was made.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import AuditLog, exported_public_keys, store, verify_log
from gateway.audit.archives import verify_archives, verify_segment
from gateway.audit.record import canonical_json, key_id_of
from gateway.audit.retention import (
    ARCHIVED_EVENT,
    Handoff,
    RetentionPolicy,
    Seal,
    archive,
    iter_archived,
    plan_cut,
    read_handoff,
    segments,
)
from tests.audit.conftest import Keys, LogPaths

DAY_NS = 86_400 * 10**9
# a closed log with two archived runs: its database, its public keys, the retention policy
Archived = tuple[Path, Keys, RetentionPolicy]


def _ts(db: Path, seq: int) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT ts_ns FROM events WHERE seq = ?", (seq,)).fetchone()[0])
    finally:
        conn.close()


def _policy(
    tmp: Path,
    mode: Literal["archive", "delete"] = "archive",
    days: float | None = 1.0,
    max_bytes: int | None = None,
) -> RetentionPolicy:
    return RetentionPolicy(retention_days=days, max_bytes=max_bytes, mode=mode, archive_dir=tmp / "archive")


def _fill(log: AuditLog, n: int, start: int = 1) -> None:
    for i in range(start, start + n):
        log.append("tool.call", {"tool": f"t{i}", "n": i}, principal="alice")


def _archive_upto(log: AuditLog, policy: RetentionPolicy, seq: int) -> None:
    """Archive every event up to ``seq`` by pretending a day has passed since it was written."""
    h = archive(log, policy, now_ns=_ts(log.path, seq) + 1 + DAY_NS)
    assert h is not None and h.seq == seq


@pytest.fixture
def archived(open_log: Callable[..., AuditLog], log_paths: tuple[Path, Path], tmp_path: Path) -> Archived:
    """A log of 30 events, 1..10 and 11..20 archived in two runs, closed; (db, keys, policy)."""
    log = open_log()
    policy = _policy(tmp_path)
    _fill(log, 20)
    _archive_upto(log, policy, 10)
    _fill(log, 9, 21)  # seq 21 was the first run's audit.archived event
    _archive_upto(log, policy, 20)
    log.close()
    return log_paths[0], exported_public_keys(log_paths[1]), policy


def _ranges(segs: list[tuple[Seal | None, Path]]) -> list[tuple[int, int]]:
    """Each segment's (first, last) seq, from its seal (every segment has one)."""
    out = []
    for seal, _ in segs:
        assert seal is not None
        out.append((seal.first_seq, seal.last_seq))
    return out


def _handoff(db: Path) -> Handoff | None:
    conn = store.open_reader(db)
    try:
        return read_handoff(conn)
    finally:
        conn.close()


def test_archived_segments_verify_on_their_own_and_the_live_chain_from_its_handoff(
    archived: Archived,
) -> None:
    db, keys, policy = archived
    segs = segments(policy.archive_dir, db.name)
    assert _ranges(segs) == [(1, 10), (11, 20)]
    for _, path in segs:
        res = verify_segment(path, keys)
        assert res.ok, res.problem
    live = verify_log(db, keys)
    assert live.ok, live.problem
    h = _handoff(db)
    assert h is not None and (h.seq, h.previous_seq, h.from_seq, h.count) == (20, 10, 11, 10)
    conn = store.open_reader(db)
    first = next(store.iter_records(conn))
    conn.close()
    assert first.seq == 21 and first.type == ARCHIVED_EVENT  # the hand-off is on the chain too
    whole = verify_archives(policy.archive_dir, db.name, h, keys)
    assert whole.ok and whole.events == 20, whole.problem
    assert [r.seq for r in iter_archived(policy.archive_dir, db.name)] == list(range(1, 21))


def _rewrite_line(path: Path, index: int, edit: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_text().splitlines()
    doc = json.loads(lines[index])
    edit(doc)
    lines[index] = json.dumps(doc)
    path.write_text("\n".join(lines) + "\n")


def test_a_tampered_segment_is_found(archived: Archived) -> None:
    db, keys, policy = archived
    (_, first), (_, second) = segments(policy.archive_dir, db.name)
    _rewrite_line(first, 3, lambda d: d["details"].update(tool="innocent"))
    res = verify_segment(first, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (4, "changed")
    lines = second.read_text().splitlines()
    second.write_text("\n".join(lines[:5] + lines[6:]) + "\n")  # seq 16 dropped
    res = verify_segment(second, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (16, "removed")


def test_a_forged_or_edited_seal_is_found(archived: Archived) -> None:
    db, keys, policy = archived
    (_, path), _ = segments(policy.archive_dir, db.name)
    seal_path = path.with_name(path.name + ".seal.json")
    seal = json.loads(seal_path.read_text())
    # shorten the segment and re-seal it with a key the verifier does not trust
    lines = path.read_text().splitlines()[:7]
    path.write_text("\n".join(lines) + "\n")
    other = Ed25519PrivateKey.generate()
    seal.update(last_seq=7, count=7, key_id=key_id_of(other.public_key()))
    seal_path.write_text(json.dumps(seal))
    res = verify_segment(path, keys)
    assert not res.ok and res.problem is not None and res.problem.kind == "changed"
    # the true seal over the cut file: the cut is found
    seal_path.write_text(json.dumps({**seal, "last_seq": 10, "count": 10, "key_id": next(iter(keys))}))
    assert not verify_segment(path, keys).ok


def test_a_segment_whose_bytes_differ_from_the_seal_is_found(archived: Archived) -> None:
    db, keys, policy = archived
    (_, path), _ = segments(policy.archive_dir, db.name)
    path.write_text(path.read_text().replace('"n": 2', '"n":  2'))  # same records, other bytes
    res = verify_segment(path, keys)
    assert not res.ok and res.problem is not None and res.problem.kind == "changed"


def test_a_gap_between_segments_and_the_handoff_is_found(archived: Archived) -> None:
    db, keys, policy = archived
    h = _handoff(db)
    (_, first), (_, second) = segments(policy.archive_dir, db.name)
    second.rename(second.with_name("moved-away.jsonl"))  # the segment next to the hand-off is gone
    res = verify_archives(policy.archive_dir, db.name, h, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (11, "removed")
    second.with_name("moved-away.jsonl").rename(second)
    first.unlink()  # now the oldest one
    res = verify_archives(policy.archive_dir, db.name, h, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (1, "removed")


def test_the_live_chain_must_start_at_its_handoff(archived: Archived) -> None:
    db, keys, _ = archived
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM events WHERE seq = 21")  # the first live event after the hand-off
    conn.close()
    res = verify_log(db, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (21, "removed")


def test_an_edited_or_removed_handoff_is_found(archived: Archived) -> None:
    db, keys, _ = archived
    conn = sqlite3.connect(db)
    doc = json.loads(conn.execute("SELECT doc FROM handoff").fetchone()[0])
    with conn:  # claim the live chain starts later (hiding events 21..25): the signature breaks
        conn.execute("UPDATE handoff SET doc = ?", (canonical_json({**doc, "seq": 25}),))
    assert not verify_log(db, keys).ok
    with conn:  # no hand-off at all: the live chain starts at 21, seq 1..20 are missing
        conn.execute("DELETE FROM handoff")
    conn.close()
    res = verify_log(db, keys)
    assert not res.ok and res.problem is not None and (res.problem.seq, res.problem.kind) == (1, "removed")


def test_delete_mode_keeps_the_live_chain_verifiable(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, tmp_path: Path
) -> None:
    log = open_log()
    policy = _policy(tmp_path, mode="delete")
    _fill(log, 12)
    _archive_upto(log, policy, 8)
    _fill(log, 3, 14)  # the writer carries on after a retention run
    assert verify_log(log.path, exported_public_keys(log_paths[1])).ok
    h = _handoff(log.path)
    assert h is not None and (h.mode, h.segment, h.count) == ("delete", None, 8)
    assert segments(policy.archive_dir, log.path.name) == []


def test_max_bytes_takes_the_oldest_events_out(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, tmp_path: Path
) -> None:
    log = open_log()
    for i in range(400):
        log.append("tool.call", {"tool": "t", "blob": "x" * 400, "n": i}, principal="alice")
    policy = RetentionPolicy(
        retention_days=None, max_bytes=100_000, mode="archive", archive_dir=tmp_path / "a"
    )
    h = archive(log, policy)
    assert h is not None and 0 < h.seq < 400
    assert archive(log, policy) is None  # brought under the limit: nothing more is due
    keys = exported_public_keys(log_paths[1])
    assert verify_log(log.path, keys).ok
    assert verify_archives(policy.archive_dir, log.path.name, h, keys).ok


def test_the_head_is_never_archived(open_log: Callable[..., AuditLog], tmp_path: Path) -> None:
    log = open_log()
    _fill(log, 5)
    h = archive(log, _policy(tmp_path), now_ns=_ts(log.path, 5) + 10 * DAY_NS)
    assert h is not None and h.seq == 4  # seq 5 stays: the writer resumes from the live head
    log.close()
    reopened = AuditLog(log.path, log.key_path)
    try:
        assert reopened.last_seq == 6  # 5 + the audit.archived event
        reopened.append("tool.call", {"tool": "after"})
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_a_segment_left_by_a_run_that_did_not_commit_is_replaced(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, tmp_path: Path
) -> None:
    log = open_log()
    policy = _policy(tmp_path)
    _fill(log, 20)
    _archive_upto(log, policy, 10)
    seg = segments(policy.archive_dir, log.path.name)[0][1]
    # simulate a crash after the segment of 11..15 was written but before its hand-off committed
    orphan = seg.with_name(seg.name.replace("000000000001-000000000010", "000000000011-000000000015"))
    orphan.write_text("")
    orphan.with_name(orphan.name + ".seal.json").write_text(
        seg.with_name(seg.name + ".seal.json").read_text().replace('"first_seq": 1', '"first_seq": 11')
    )
    _archive_upto(log, policy, 18)
    keys = exported_public_keys(log_paths[1])
    assert _ranges(segments(policy.archive_dir, log.path.name)) == [
        (1, 10),
        (11, 18),
    ]
    assert verify_archives(policy.archive_dir, log.path.name, _handoff(log.path), keys).ok


@pytest.mark.parametrize(
    ("stamps", "ts_index"),
    [
        ([10, 20, 20, 30, 40, 50], False),  # the writer's order: never decreasing along seq
        ([10, 40, 20, 50, 30, 15], True),  # an older log with the ts index: any order
    ],
)
@pytest.mark.parametrize("horizon", [5, 10, 11, 20, 21, 35, 50, 51, 99])
def test_the_cut_for_age_is_the_last_record_older_than_the_horizon(
    tmp_path: Path, stamps: list[int], ts_index: bool, horizon: int
) -> None:
    conn = store.open_writer(tmp_path / "a.db")
    if ts_index:
        conn.execute(store.TS_INDEX)
    rows = [(seq, f"id{seq}", ts, None, None, "t", "{}", "", "", "", "k") for seq, ts in enumerate(stamps, 3)]
    conn.executemany(store.INSERT, rows)  # seq 3.. (1 and 2 taken out before)
    head = rows[-1][0]
    policy = _policy(tmp_path, days=1.0)
    cut = plan_cut(conn, policy, after=2, head=head, now_ns=horizon + DAY_NS)
    conn.close()
    older = [seq for seq, ts in enumerate(stamps, 3) if ts < horizon]
    assert cut == min(max(older, default=2), head - 1)


def test_links_planted_at_a_segments_old_temporary_names_are_not_written_through(
    open_log: Callable[..., AuditLog], log_paths: tuple[Path, Path], tmp_path: Path
) -> None:
    log = open_log()
    policy = _policy(tmp_path)
    _fill(log, 12)
    victim = tmp_path / "victim"
    victim.write_text("theirs")
    policy.archive_dir.mkdir(mode=0o700)
    segment = f"{log.path.name}.{1:012d}-{10:012d}.jsonl"
    planted = [policy.archive_dir / f".{name}.tmp" for name in (segment, segment + ".seal.json")]
    for link in planted:  # the fixed names the segment and its seal were written through
        link.symlink_to(victim)
    _archive_upto(log, policy, 10)
    log.close()
    assert victim.read_text() == "theirs" and all(link.is_symlink() for link in planted)
    [(seal, path)] = segments(policy.archive_dir, log_paths[0].name)
    assert path.name == segment and seal is not None
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600
    assert verify_segment(path, exported_public_keys(log_paths[1])).ok
