"""The audit store's helpers in-process: the query filters, the sibling chains of a data dir,
the exported checkpoints and the checkpoint file (real SQLite, real files).

``symbi audit query`` / ``verify`` reach these through the CLI; mutation testing (group
"audit-store", scripts/mutate.py) found their filters and file handling untested in-process.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit import AuditLog, store
from gateway.audit.record import AuditRecord
from gateway.audit.store import Anchor


@pytest.fixture
def events(open_log: Callable[..., AuditLog], log_paths: tuple[Path, Path]) -> Iterator[sqlite3.Connection]:
    """Seven records with known principals, tools, types, decisions and outcomes."""
    log = open_log()
    rows: list[tuple[str, dict[str, Any], str | None]] = [
        ("tool.call", {"tool": "fs__read", "decision": {"allow": True}, "outcome": "ok"}, "alice"),
        ("tool.call", {"tool": "fs__write", "decision": {"allow": False}, "outcome": "denied"}, "bob"),
        # allowed by the policy, refused by a later step: denied
        ("tool.call", {"tool": "fs__read", "decision": {"allow": True}, "outcome": "denied"}, "alice"),
        ("policy.reloaded", {"policy": "p.rego"}, None),
        ("policy_x", {}, None),  # "policy.*" is a prefix with the dot: not this one
        ("pin.approve", {"tool": "fs__read"}, "admin"),
        ("tool.call", {"tool": "fs__read", "decision": {"allow": True}, "outcome": "error"}, "alice"),
    ]
    for kind, details, who in rows:
        log.append(kind, details, principal=who)
    log.close()
    conn = store.open_reader(log_paths[0])
    try:
        yield conn
    finally:
        conn.close()


def seqs(records: list[AuditRecord]) -> list[int]:
    return [r.seq for r in records]


def test_query_filters_by_principal_tool_type_and_decision(events: sqlite3.Connection) -> None:
    q = store.query
    assert seqs(q(events)) == [1, 2, 3, 4, 5, 6, 7]
    assert seqs(q(events, principal="alice")) == [1, 3, 7]
    assert seqs(q(events, tool="fs__read")) == [1, 3, 6, 7]
    assert seqs(q(events, types=("policy.*",))) == [4]
    assert seqs(q(events, types=("policy.*", "pin.approve"))) == [4, 6]
    assert seqs(q(events, types=("policy",))) == []  # without a star: the exact type only
    assert seqs(q(events, types=("pin.approve",), tool="fs__read", principal="admin")) == [6]
    assert seqs(q(events, decision="deny")) == [2, 3]
    assert seqs(q(events, decision="allow")) == [1, 7]
    assert seqs(q(events, decision="allow", principal="bob")) == []
    with pytest.raises(ValueError):
        q(events, decision="maybe")


def test_query_time_window_limit_and_order(events: sqlite3.Connection) -> None:
    q = store.query
    ts = [r.ts_ns for r in q(events)]
    assert ts == sorted(ts)
    assert seqs(q(events, since_ns=ts[2])) == [3, 4, 5, 6, 7]  # since: inclusive
    assert seqs(q(events, until_ns=ts[2])) == [1, 2]  # until: exclusive
    assert seqs(q(events, since_ns=ts[1], until_ns=ts[3])) == [2, 3]
    assert seqs(q(events, limit=2)) == [1, 2]
    # newest first picks the last ones, returned in sequence order
    assert seqs(q(events, limit=2, newest_first=True)) == [6, 7]
    assert seqs(q(events, newest_first=True, principal="alice")) == [1, 3, 7]
    record = q(events, principal="bob")[0]
    assert (record.type, record.principal, record.details["tool"]) == ("tool.call", "bob", "fs__write")


def _log_of(
    path: Path, stamps: list[int], *, first_seq: int = 1, ts_index: bool = False
) -> sqlite3.Connection:
    """A log holding one row per stamp from ``first_seq`` on (the rows before it taken out, as
    retention does); with the old timestamp index when ``ts_index``. Unchained: queries read
    what is stored, the verifier is not involved."""
    conn = store.open_writer(path)
    if ts_index:
        conn.execute(store.TS_INDEX)
    rows = [
        (first_seq + i, f"id{i}", ts, "p", None, "t", "{}", "", "", "", "k") for i, ts in enumerate(stamps)
    ]
    conn.executemany(store.INSERT, rows)
    return conn


def _window(stamps: list[int], first_seq: int, since: int | None, until: int | None) -> list[int]:
    return [
        first_seq + i
        for i, ts in enumerate(stamps)
        if (since is None or ts >= since) and (until is None or ts < until)
    ]


_stamps = st.lists(st.integers(min_value=0, max_value=60), max_size=40)
_bound = st.one_of(st.none(), st.integers(min_value=-1, max_value=62))


@settings(max_examples=150, deadline=None)
@given(_stamps, st.integers(min_value=1, max_value=5), _bound, _bound)
def test_a_time_window_of_a_log_in_time_order_is_a_seq_range(
    tmp_path_factory: pytest.TempPathFactory,
    stamps: list[int],
    first_seq: int,
    since: int | None,
    until: int | None,
) -> None:
    """A log the writer wrote (no ts index: timestamps never decrease along seq, equal ones
    included) is searched by seq; every window holds exactly the records stamped inside it."""
    stamps = sorted(stamps)
    conn = _log_of(tmp_path_factory.mktemp("ordered") / "a.db", stamps, first_seq=first_seq)
    assert not store.has_ts_index(conn)
    assert seqs(store.query(conn, since_ns=since, until_ns=until)) == _window(stamps, first_seq, since, until)
    if since is not None and stamps:  # (an empty log: 1, any window is empty)
        inside = _window(stamps, first_seq, since, None)
        assert store.seq_from(conn, since) == (inside[0] if inside else first_seq + len(stamps))
    conn.close()


@settings(max_examples=100, deadline=None)
@given(_stamps, _bound, _bound)
def test_a_log_with_the_ts_index_is_searched_by_time_whatever_its_order(
    tmp_path_factory: pytest.TempPathFactory, stamps: list[int], since: int | None, until: int | None
) -> None:
    """An older log (the index present) may hold timestamps out of seq order (a clock stepped
    back before the writer clamped it): its windows do not rely on the order."""
    conn = _log_of(tmp_path_factory.mktemp("unordered") / "a.db", stamps, ts_index=True)
    assert store.has_ts_index(conn)
    assert seqs(store.query(conn, since_ns=since, until_ns=until)) == _window(stamps, 1, since, until)
    conn.close()


def test_new_logs_have_no_ts_index_and_older_logs_keep_theirs(tmp_path: Path) -> None:
    conn = _log_of(tmp_path / "a.db", [5, 1, 9], ts_index=True)  # out of order, as an old log may be
    conn.close()
    conn = store.open_writer(tmp_path / "a.db")  # a new gateway continues it
    assert store.has_ts_index(conn)
    assert seqs(store.query(conn, since_ns=2, until_ns=6)) == [1]
    conn.close()
    fresh = store.open_writer(tmp_path / "b.db")
    assert not store.has_ts_index(fresh)
    assert store.seq_from(fresh, 0) == 1  # empty: any window is empty
    assert store.query(fresh, since_ns=0) == []
    fresh.close()


def test_chain_paths_lists_the_base_then_its_numbered_siblings(tmp_path: Path) -> None:
    base = tmp_path / "audit.db"
    assert store.chain_paths(base) == [base]  # nothing yet: the base alone
    assert store.chain_paths(tmp_path / "missing" / "audit.db") == [tmp_path / "missing" / "audit.db"]
    for name in ("audit-10.db", "audit-2.db", "audit-x.db", "audit-3.db.bak", "other-4.db", "audit-2.dbx"):
        (tmp_path / name).write_text("")
    # siblings only (no base file yet): still base first, then by number (10 after 2)
    assert store.chain_paths(base) == [base, tmp_path / "audit-2.db", tmp_path / "audit-10.db"]
    base.write_text("")
    assert store.chain_paths(base) == [base, tmp_path / "audit-2.db", tmp_path / "audit-10.db"]


def anchor(seq: int) -> Anchor:
    return Anchor(
        seq=seq, chain_hash=f"{seq:064x}", ts_ns=seq * 1000, key_id="ed25519:k", signature=f"sig{seq}"
    )


def test_exported_checkpoints_are_appended_private_and_read_per_chain(tmp_path: Path) -> None:
    out = tmp_path / "witness" / "deep" / "checkpoints.jsonl"
    store.export_checkpoint(out, tmp_path / "audit.db", anchor(5))
    store.export_checkpoint(out, tmp_path / "audit-2.db", anchor(7))
    store.export_checkpoint(out, tmp_path / "audit.db", anchor(10))
    assert out.stat().st_mode & 0o777 == 0o600 and out.parent.stat().st_mode & 0o777 == 0o700
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(d["log"], d["seq"]) for d in lines] == [("audit.db", 5), ("audit-2.db", 7), ("audit.db", 10)]
    assert store.read_exported(out, "audit.db") == [anchor(5), anchor(10)]
    assert store.read_exported(out, "audit-2.db") == [anchor(7)]
    assert store.read_exported(out) == [anchor(5), anchor(7), anchor(10)]  # no name: every chain
    # a line without a "log" field counts for every chain; blank lines are skipped
    with out.open("a") as f:
        f.write("\n" + json.dumps(anchor(11).as_dict()) + "\n\n")
    assert store.read_exported(out, "audit-2.db") == [anchor(7), anchor(11)]


def test_a_single_pretty_printed_checkpoint_reads_as_one_anchor(tmp_path: Path) -> None:
    one = tmp_path / "checkpoint.json"
    one.write_text(json.dumps(anchor(3).as_dict(), indent=2))
    assert store.read_exported(one, "audit.db") == [anchor(3)]


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", '"a string"', '{"seq": 1}'])
def test_a_malformed_export_line_is_an_error(tmp_path: Path, bad: str) -> None:
    out = tmp_path / "checkpoints.jsonl"
    out.write_text(json.dumps({"log": "audit.db", **anchor(1).as_dict()}) + "\n" + bad + "\n")
    with pytest.raises(ValueError):
        store.read_exported(out, "audit.db")


def test_the_checkpoint_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.db.checkpoint"
    assert store.read_checkpoint_file(path) is None
    old = os.umask(0)
    try:
        store.write_checkpoint_file(path, anchor(4))
        store.write_checkpoint_file(path, anchor(9))
    finally:
        os.umask(old)
    assert store.read_checkpoint_file(path) == anchor(9)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.db.checkpoint"]  # no temp file left
    path.write_text("{")
    with pytest.raises(ValueError):
        store.read_checkpoint_file(path)


def test_the_writer_makes_the_logs_folders_and_the_anchor_file_sits_beside_the_log(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "audit.db"
    conn = store.open_writer(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        conn.close()
    assert path.is_file()
    # the name existing data dirs already hold: another name would orphan their anchors
    assert store.checkpoint_path(path) == path.parent / "audit.db.anchor.json"


@pytest.mark.parametrize(
    "wrong", [{"seq": "1"}, {"chain_hash": 1}, {"signature": None}, {"seq": 1.5}, {"ts_ns": None, "seq": "x"}]
)
def test_an_anchor_with_a_field_of_the_wrong_type_is_malformed(wrong: dict[str, Any]) -> None:
    good = anchor(1).as_dict()
    assert Anchor.from_dict(good) == anchor(1)
    with pytest.raises(ValueError):
        Anchor.from_dict({**good, **wrong})
    with pytest.raises(ValueError):
        Anchor.from_dict({k: v for k, v in good.items() if k != "key_id"})


def test_a_link_planted_at_the_checkpoints_old_temporary_name_is_not_written_through(
    tmp_path: Path,
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("theirs")
    path = store.checkpoint_path(tmp_path / "audit.db")
    planted = path.with_name(f".{path.name}.tmp")  # the fixed name it was written through
    planted.symlink_to(victim)
    store.write_checkpoint_file(path, anchor(5))
    assert victim.read_text() == "theirs" and planted.is_symlink()
    assert not path.is_symlink() and path.stat().st_mode & 0o777 == 0o600
    assert store.read_exported(path, "audit.db") == [anchor(5)]


def test_the_last_exported_checkpoint_of_a_log_is_the_last_appended(tmp_path: Path) -> None:
    out = tmp_path / "checkpoints.jsonl"
    for log, a in (("audit.db", anchor(9)), ("audit-2.db", anchor(4)), ("audit.db", anchor(3))):
        store.export_checkpoint(out, tmp_path / log, a)  # audit.db replaced: it starts again
    assert store.last_exported(out) == {"audit.db": anchor(3), "audit-2.db": anchor(4)}


def test_a_log_whose_path_has_uri_characters_is_read(tmp_path: Path) -> None:
    # the reader passed the path into a URI unquoted: "#" cut it (another file, not found), so
    # `symbi audit verify|query|tail` failed on a data dir the bus's reader could read
    path = tmp_path / "a#b?c%20" / "audit.db"
    store.open_writer(path).close()
    conn = store.open_reader(path)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        conn.close()
