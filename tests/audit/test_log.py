"""AuditLog: durable appends, group commit, fail closed, rotation, recent()."""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.audit import AuditLog, exported_public_keys, load_public_keys, verify_log
from gateway.audit.batch import Item
from gateway.audit.keys import public_key_path, retired_public_key_path
from gateway.config.model import Config
from gateway.config.sections import AuditSection, GatewaySection
from gateway.errors import AuditError
from gateway.events import Event, EventSink
from tests.audit.conftest import LogPaths
from tests.conftest import break_audit_log


def test_is_an_event_sink_and_acknowledges_in_order(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    log = open_log()
    sink: EventSink = log
    sink.emit(Event.GATEWAY_START, {"version": "0.1"}, principal="system")
    assert log.append("config.load", {"path": "x"}) == 2
    log.close()
    res = verify_log(log_paths[0], exported_public_keys(log_paths[1]))
    assert res.check().events == 2 and res.last_seq == 2


def test_concurrent_records_share_commits_and_all_land(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    log = open_log(batch_max=64)

    async def many() -> list[int | None]:
        return await asyncio.gather(*(log.record("tool.call", {"i": i}, principal="p") for i in range(500)))

    seqs = asyncio.run(many())
    assert sorted(s for s in seqs if s is not None) == list(range(1, 501))
    log.close()
    conn = sqlite3.connect(log_paths[0])
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 500
    assert verify_log(log_paths[0], exported_public_keys(log_paths[1])).ok


def test_emits_from_worker_threads_and_the_loop_at_once_all_land_in_one_intact_chain(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    # the gateway's sink (metrics tee over the log) is called from the event loop and from the
    # worker threads that do blocking work (anyio.to_thread): EventSink.emit must be thread-safe
    import threading

    from gateway.metrics import GatewayMetrics, MetricsSink

    log = open_log(batch_max=16)
    metrics = GatewayMetrics()
    sink: EventSink = MetricsSink(log, metrics)
    start = threading.Barrier(9)

    def worker(w: int) -> None:
        start.wait()
        for i in range(150):
            sink.emit(Event.TOOL_CALL, {"w": w, "i": i}, principal=f"t{w}")

    async def loop_side() -> None:
        threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        start.wait()
        for i in range(150):
            sink.emit(Event.TOOL_CALL, {"w": "loop", "i": i}, principal="loop")
            if i % 10 == 0:
                await asyncio.sleep(0)
        for t in threads:
            await asyncio.to_thread(t.join)

    asyncio.run(loop_side())
    log.close()
    conn = sqlite3.connect(log_paths[0])
    rows = conn.execute("SELECT principal, details FROM events").fetchall()
    assert len(rows) == 9 * 150 and len(set(rows)) == 9 * 150  # none lost, none doubled
    assert verify_log(log_paths[0], exported_public_keys(log_paths[1])).check().events == 9 * 150
    counted = metrics.registry.get_sample_value("symbi_audit_events_total", {"event_type": "tool.call"})
    assert counted == 9 * 150


def test_verify_a_log_while_it_is_written(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> None:
    log = open_log()
    for i in range(10):
        log.append("e", {"i": i})
    assert log.verify().check().last_seq == 10
    conn = sqlite3.connect(log_paths[0])
    conn.execute("UPDATE events SET type = 'x' WHERE seq = 4")
    conn.commit()
    conn.close()
    res = log.verify(all_signatures=False)
    assert res.problem is not None and (res.problem.seq, res.problem.kind) == (4, "changed")


def test_reopening_continues_the_chain(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> None:
    log = open_log()
    log.append("a", {})
    log.close()
    log2 = open_log()
    assert log2.append("b", {}) == 2
    log2.close()
    assert verify_log(log_paths[0], exported_public_keys(log_paths[1])).check().last_seq == 2


def test_unwritable_log_fails_closed(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> None:
    log = open_log()
    log.append("ok", {})
    break_audit_log(log_paths[0])
    with pytest.raises(AuditError):
        log.append("lost", {})
    log.emit("lost-too", {})  # nobody waits for it: the log must refuse everything after
    with pytest.raises(AuditError):
        log.flush()
    with pytest.raises(AuditError):
        log.emit("after", {})
    with pytest.raises(AuditError):
        log.ensure_writable()


def _frames(err: BaseException) -> int:
    tb, n = err.__traceback__, 0
    while tb is not None:
        tb, n = tb.tb_next, n + 1
    return n


def test_a_broken_logs_error_does_not_grow_with_each_refusal(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """The writer's one ``broken`` error was raised as is by every refusal after: each raise
    added its frames to it (a hosted agent's check each renewal, for ever). Now its traceback
    is as long after the hundredth refusal as after the first."""
    log = open_log()
    break_audit_log(log_paths[0])
    with pytest.raises(AuditError):
        log.append("lost", {})
    log.emit("lost-too", {})
    with pytest.raises(AuditError):  # once waited for, the writer has its ``broken`` error
        log.flush()
    sizes = []
    for _ in range(100):
        for refuse in (log.ensure_writable, lambda: log.emit("after", {})):
            with pytest.raises(AuditError) as caught:
                refuse()
            sizes.append(_frames(caught.value))
    assert max(sizes) <= 4, sizes


def test_on_failure_warn_logs_instead(
    open_log: Callable[..., AuditLog], log_paths: LogPaths, caplog: pytest.LogCaptureFixture
) -> None:
    log = open_log(on_failure="warn")
    break_audit_log(log_paths[0])
    assert log.append("lost", {}) is None
    assert asyncio.run(log.record("lost", {})) is None
    assert any("not recorded" in r.getMessage() for r in caplog.records)


def test_a_log_whose_writer_stopped_refuses_events(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    log.append("ok", {})
    stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
    log._queue.put(Item("close", future=stopped))  # the writer returns without the log being closed
    stopped.result(10)
    log._thread.join(10)
    with pytest.raises(AuditError):
        log.emit("unwritten", {})
    with pytest.raises(AuditError):
        log.append("unwritten", {})
    with pytest.raises(AuditError):
        log.ensure_writable()


def test_closed_log_refuses(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    log.close()
    with pytest.raises(AuditError):
        log.emit("x", {})


def test_rotation_hands_trust_to_the_new_key(open_log: Callable[..., AuditLog], log_paths: LogPaths) -> None:
    db, key_path = log_paths
    log = open_log()
    log.append("before", {})
    old_id = log.key_id
    old_pub = load_public_keys(public_key_path(key_path))
    new_id = log.rotate_key()
    assert new_id != old_id and log.key_id == new_id
    log.append("after", {})
    log.close()
    assert retired_public_key_path(key_path, old_id).exists()
    assert list(load_public_keys(public_key_path(key_path))) == [new_id]
    # the old key alone is enough: the rotation event hands trust on
    res = verify_log(db, old_pub).check()
    assert res.events == 3 and new_id in res.key_ids
    # the new key alone cannot vouch for events signed before it existed
    bad = verify_log(db, load_public_keys(public_key_path(key_path)))
    assert bad.problem is not None and (bad.problem.seq, bad.problem.kind) == (1, "inserted")
    # and the log reopens with the new key
    log2 = open_log()
    assert log2.key_id == new_id and log2.append("again", {}) == 4


def test_recent_returns_wire_records_oldest_first(open_log: Callable[..., AuditLog]) -> None:
    log = open_log()
    for i in range(5):
        log.append("e", {"i": i})
    recent = log.recent(2)
    assert [r["seq"] for r in recent] == [4, 5]
    assert {"chain_hash", "signature", "key_id", "prev_hash"} <= set(recent[0])


def test_from_config_uses_config_paths(tmp_path: Path) -> None:
    cfg = Config(
        gateway=GatewaySection(data_dir=tmp_path / "d"), audit=AuditSection(batch_max=8, on_failure="warn")
    )
    log = AuditLog.from_config(cfg)
    try:
        assert log.path == cfg.audit_path and log.key_path == cfg.audit_key_path
        assert log.batch_max == 8 and log.on_failure == "warn"
    finally:
        log.close()


def test_events_emitted_before_exit_without_close_are_committed(log_paths: LogPaths) -> None:
    import os
    import subprocess
    import sys

    db, key = log_paths
    code = (
        "import sys; from pathlib import Path; from gateway.audit import AuditLog\n"
        "log = AuditLog(Path(sys.argv[1]), Path(sys.argv[2]))\n"
        "[log.emit('gateway.event', {'i': i}) for i in range(500)]\n"
    )  # no close(), no flush()
    root = Path(__file__).parents[2]
    subprocess.run(
        [sys.executable, "-c", code, str(db), str(key)],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert verify_log(db, exported_public_keys(key)).check().events == 500


def test_interrupted_rotation_of_chains_sharing_a_key_recovers(tmp_path: Path) -> None:
    from gateway.audit.keys import finish_rotation, pending_key_path

    key = tmp_path / "audit-key.pem"
    a, b = tmp_path / "audit.db", tmp_path / "audit-2.db"
    for db in (a, b):
        with AuditLog(db, key) as log:
            log.append("gateway.start", {})
    old_keys = exported_public_keys(key)
    # chain a records the hand-over, then the rotation is cut short (b never did, no finish)
    with AuditLog(a, key) as log:
        new_id = log.rotate_key(finish=False)
    assert pending_key_path(key).exists()
    with AuditLog(a, key) as log_a, AuditLog(b, key) as log_b:
        assert log_a.key_id == new_id and log_b.key_id != new_id  # each chain signs with its own head's key
        log_a.append("after", {})
        log_b.append("after", {})
    # completing it: b hands over to the same pending key, then the key file is replaced
    with AuditLog(b, key) as log:
        assert log.rotate_key(finish=False) == new_id
    assert finish_rotation(key) == new_id and not pending_key_path(key).exists()
    for db in (a, b):
        assert verify_log(db, old_keys).check().key_ids == sorted({*old_keys, new_id})
        with AuditLog(db, key) as log:
            assert log.key_id == new_id


def test_stalled_store_fails_the_waiting_caller_but_keeps_the_event(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    log = open_log()
    blocker = sqlite3.connect(log_paths[0], isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another connection holds the write lock: the writer waits
    try:
        with pytest.raises(AuditError):
            asyncio.run(log.record("tool.call", {"n": 1}, timeout=0.3))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    log.flush()
    assert [r["details"] for r in log.recent(5)] == [{"n": 1}]


def _signed(db: Path) -> list[tuple[str, bool]]:
    """(event type, carries a signature) per row: one signature per group commit, on its last row."""
    conn = sqlite3.connect(db)
    try:
        return [(t, bool(sig)) for t, sig in conn.execute("SELECT type, signature FROM events ORDER BY seq")]
    finally:
        conn.close()


def test_emitted_events_share_the_commit_of_the_record_that_follows(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """A call's lifecycle flips (emit) wait for its record instead of taking an fsync of their
    own before it: one group commit, so one signature, on the record."""
    log = open_log()
    log.EMIT_LINGER_S = 30.0  # longer than any scheduling delay here: the record must end the wait

    async def call() -> int | None:
        log.emit("agent.state", {"to": "Running"}, principal="p")
        await asyncio.sleep(0.01)  # the upstream call; the writer has long seen the first flip
        log.emit("agent.state", {"to": "Ready"}, principal="p")
        return await asyncio.wait_for(log.record("tool.call", {"i": 1}, principal="p"), 20)

    assert asyncio.run(call()) == 3
    log.flush()  # stores the record's signature (made after the acknowledgement)
    assert _signed(log_paths[0]) == [("agent.state", False), ("agent.state", False), ("tool.call", True)]
    log.close()
    assert verify_log(log_paths[0], exported_public_keys(log_paths[1])).check().events == 3


def test_emitted_events_alone_are_committed_after_the_linger(
    open_log: Callable[..., AuditLog], log_paths: LogPaths
) -> None:
    """Nothing awaited follows: the emits are committed on their own once the linger is over
    (no flush, no close), then signed once the writer is idle, and a flush never waits for the linger."""
    log = open_log(seal_idle_s=0.05)
    log.EMIT_LINGER_S = 0.05
    log.emit("gateway.event", {"i": 1})
    deadline = time.monotonic() + 20
    while _signed(log_paths[0]) != [("gateway.event", True)] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _signed(log_paths[0]) == [("gateway.event", True)]
    log.EMIT_LINGER_S = 30.0
    log.emit("gateway.event", {"i": 2})
    log.flush(timeout=20)  # AuditError if the flush waited for the 30 s linger
    assert len(_signed(log_paths[0])) == 2
