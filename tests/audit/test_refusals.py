"""RefusalTally: past ``per_window`` refusals of a principal within a window, count; the counts
add up exactly, memory stays bounded, and a real AuditLog records them on flush and close."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog, exported_public_keys, store, verify_log
from gateway.audit.refusals import MAX_KEYS, SAMPLES, TARGET_CHARS, RefusalKey, RefusalTally
from gateway.audit.report import build_report
from gateway.events import Event

DENIED = RefusalKey("agent-1", "tool.call", "policy_denied", "fs__write")


class Clock:
    """The tally's clock, moved by the test (no sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _summarized(details: dict[str, Any]) -> int:
    return sum(int(c["count"]) for c in details["counts"])


def test_the_first_refusals_of_a_window_are_recorded_the_rest_counted() -> None:
    clock = Clock()
    tally = RefusalTally(3, 60.0, clock=clock)
    admitted = [tally.admit("alice", DENIED, f"c{i}") for i in range(10)]
    assert [a for a, _ in admitted] == [True] * 3 + [False] * 7
    assert all(ended == [] for _, ended in admitted)
    assert tally.pending() == 7
    assert tally.take() == []  # the window has not ended
    clock.now += 60.0
    # the next refusal ends the window: its summary comes first, and a new window records again
    again, [summary] = tally.admit("alice", DENIED, "c10")
    assert again is True and tally.pending() == 0
    d = summary.details
    assert summary.principal == "alice"
    assert (d["summarized"], d["recorded"], d["recorded_per_window"], d["window_ended"]) == (7, 3, 3, True)
    [entry] = d["counts"]
    assert entry["agent"] == "agent-1" and entry["error_code"] == "policy_denied"
    assert entry["target"] == "fs__write" and entry["event_type"] == "tool.call"
    assert entry["call_ids"] == ["c3", "c4", "c5"][:SAMPLES]
    assert d["first_ns"] <= d["last_ns"]


def test_each_principal_has_its_own_window_and_budget() -> None:
    tally = RefusalTally(2, 60.0, clock=Clock())
    got = [tally.admit(p, DENIED, "c")[0] for p in ("alice", "bob", "alice", "bob", "alice", "bob")]
    assert got == [True, True, True, True, False, False]


def test_counts_are_kept_per_agent_code_and_target_and_add_up() -> None:
    tally = RefusalTally(1, 60.0, clock=Clock())
    keys = [
        DENIED,
        RefusalKey("agent-2", "tool.call", "policy_denied", "fs__write"),
        RefusalKey("agent-1", "tool.call", "agent_suspended", "fs__write"),
        RefusalKey("agent-1", "resource.read", "policy_denied", "file:///etc/shadow"),
    ]
    for i in range(41):
        tally.admit("alice", keys[i % 4], f"c{i}")
    [summary] = tally.take(every=True)
    d = summary.details
    assert d["summarized"] == 40 == _summarized(d)
    assert len(d["counts"]) == 4 and d["window_ended"] is False
    by_key = {(c["agent"], c["event_type"], c["error_code"], c["target"]): c["count"] for c in d["counts"]}
    assert by_key[("agent-1", "tool.call", "policy_denied", "fs__write")] == 10  # c0 was recorded


def test_a_flood_of_distinct_targets_stays_bounded() -> None:
    """The attacker picks the targets (unknown tool names): at most MAX_KEYS of them are told
    apart, the others share one bucket, and each kept target is cut."""
    tally = RefusalTally(1, 60.0, clock=Clock())
    for i in range(5001):
        tally.admit("alice", RefusalKey(None, "tool.call", "unknown_tool", f"{i:05d}" + "x" * 5000), f"c{i}")
    [summary] = tally.take(every=True)
    counts = summary.details["counts"]
    assert len(counts) == MAX_KEYS + 1
    [other] = [c for c in counts if c.get("other")]
    assert other["count"] == 5000 - MAX_KEYS and len(other["call_ids"]) == SAMPLES
    assert max(len(c["target"]) for c in counts if not c.get("other")) == TARGET_CHARS
    assert _summarized(summary.details) == 5000


def test_principals_past_the_cap_are_recorded_one_by_one() -> None:
    tally = RefusalTally(1, 60.0, max_principals=2, clock=Clock())
    for p in ("a", "b"):
        tally.admit(p, DENIED, "c")
    assert [tally.admit("c", DENIED, f"c{i}")[0] for i in range(5)] == [True] * 5  # never counted
    assert tally.admit("a", DENIED, "c")[0] is False  # a tracked one is still counted


def test_a_flush_writes_the_counts_but_the_window_goes_on() -> None:
    clock = Clock()
    tally = RefusalTally(2, 60.0, clock=clock)
    for i in range(5):
        tally.admit("alice", DENIED, f"c{i}")
    [early] = tally.take(every=True)
    assert early.details["summarized"] == 3 and early.details["window_ended"] is False
    assert tally.take(every=True) == []  # nothing counted since
    # the budget of the window is spent: a flush does not reopen it
    assert tally.admit("alice", DENIED, "c5")[0] is False
    clock.now += 61.0
    [late] = tally.take()  # the sweep: the window ended, with no refusal after it
    assert late.details["summarized"] == 1 and late.details["window_ended"] is True
    assert tally.take(every=True) == [] and tally.pending() == 0
    assert tally.admit("alice", DENIED, "c6")[0] is True  # a new window


def test_counts_from_many_threads_add_up() -> None:
    tally = RefusalTally(50, 3600.0)
    admitted: list[bool] = []
    lock = threading.Lock()

    def flood(n: int) -> None:
        got = [tally.admit("alice", DENIED, f"{n}-{i}")[0] for i in range(1000)]
        with lock:
            admitted.extend(got)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 50
    [summary] = tally.take(every=True)
    assert summary.details["summarized"] == 8000 - 50


def test_the_log_records_the_counts_on_flush_and_close(tmp_path: Path) -> None:
    db, key = tmp_path / "audit.db", tmp_path / "audit-key.pem"
    log = AuditLog(db, key, refusals=RefusalTally(2, 3600.0))
    admitted = [log.admit_refusal("alice", DENIED, f"c{i}") for i in range(7)]
    assert admitted == [True, True] + [False] * 5
    log.flush()
    [first] = [r.as_dict() for r in _summaries(db)]
    assert first["principal"] == "alice" and first["details"]["summarized"] == 5
    for i in range(4):
        log.admit_refusal("alice", DENIED, f"d{i}")
    log.close()  # what was counted since goes on the record before the log closes
    summaries = _summaries(db)
    assert [r.details["summarized"] for r in summaries] == [5, 4]
    assert verify_log(db, exported_public_keys(key)).ok


def test_a_log_without_a_tally_records_every_refusal(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem") as log:
        assert all(log.admit_refusal("alice", DENIED, f"c{i}") for i in range(500))


def test_a_compliance_report_counts_the_summarized_refusals(tmp_path: Path) -> None:
    db, key = tmp_path / "audit.db", tmp_path / "audit-key.pem"
    with AuditLog(db, key, refusals=RefusalTally(2, 3600.0)) as log:
        for i in range(12):
            if log.admit_refusal("alice", DENIED, f"c{i}"):  # as the audit step records one
                log.append("tool.call", {"tool": "fs__write", "outcome": "denied"}, principal="alice")
    conn = store.open_reader(db)
    try:
        records = store.query(conn)
    finally:
        conn.close()
    report = build_report(records, "gdpr", verify_log(db, exported_public_keys(key)))
    [row] = report["access"]
    assert (row["principal"], row["target"], row["calls"], row["denied"]) == ("alice", "fs__write", 12, 12)
    assert len(report["denied"]) == 2 and report["summary"]["denied_counted"] == 10


def test_refused_requests_events_are_counted_in_the_same_budget(tmp_path: Path) -> None:
    """``emit`` of a refusal event (REFUSAL_EVENTS) past the budget is counted, not queued;
    other events are never counted; the report keeps refused requests out of the access table."""
    db, key = tmp_path / "audit.db", tmp_path / "audit-key.pem"
    with AuditLog(db, key, refusals=RefusalTally(3, 3600.0)) as log:
        for i in range(10):
            log.emit(
                Event.REQUEST_REFUSED,
                {"method": "resources/subscribe", "target": f"nowhere://{i % 2}", "error_code": "unknown"},
                principal="alice",
                agent="a1",
            )
            log.emit(Event.AGENT_STATE, {"from": "ready", "to": "running"}, principal="alice", agent="a1")
        log.emit(Event.STATUS_READ_DENIED, {"uri": "symbi://status"}, principal="bob")
    conn = store.open_reader(db)
    try:
        records = store.query(conn)
    finally:
        conn.close()
    kinds = [r.type for r in records]
    assert kinds.count("request.refused") == 3 and kinds.count("agent.state") == 10
    assert kinds.count("status.read_denied") == 1  # bob's own budget
    [summary] = [r for r in records if r.type == Event.AUDIT_REFUSALS_SUMMARIZED.value]
    assert summary.principal == "alice" and _summarized(summary.details) == 7
    assert {(c["event_type"], c["error_code"], c["target"]) for c in summary.details["counts"]} == {
        ("request.refused", "unknown", "nowhere://0"),
        ("request.refused", "unknown", "nowhere://1"),
    }
    assert all(c["call_ids"] == [] for c in summary.details["counts"])  # a request has no call id
    report = build_report(records, "gdpr", verify_log(db, exported_public_keys(key)))
    assert report["access"] == [] and report["summary"]["denied_counted"] == 0


def _summaries(db: Path) -> list[Any]:
    conn = store.open_reader(db)
    try:
        return store.query(conn, types=(Event.AUDIT_REFUSALS_SUMMARIZED.value,))
    finally:
        conn.close()
