"""``events.Unsent``: records a background task acted on that a broken log refused are held,
in order, and sent at the next chance; before, they were raised (the task ended) or dropped.
A held record is dropped only once a log COMMITTED it (it was dropped once queued: a writer
failing right after took the only record of a CLI revoke with it), and one sent late says
when it was acted on. Real audit logs on SQLite: one closed (as a broken disk leaves it), one
broken under its writer (a trigger refusing inserts), then a working one."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from gateway import events
from gateway.audit.log import AuditLog
from gateway.audit.record import AuditRecord
from gateway.audit.store import iter_records
from gateway.events import Event, EventSink, LoggingSink, Unsent, record_acted
from gateway.metrics import GatewayMetrics, MetricsSink
from tests.conftest import Stall, break_audit_log

pytestmark = pytest.mark.anyio

FIRST = (Event.TOOL_APPROVALS_CHANGED, {"fingerprint": ["1"]})
SECOND = (Event.TOOL_VERIFICATION, {"tool": "s__t", "status": "revoked"})


def _closed(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    log.close()
    return log


async def _sent(
    unsent: Unsent, sink: EventSink, records: Iterable[tuple[Event, Mapping[str, Any]]] = ()
) -> bool:
    """``send``, then whether nothing is held any more: every record committed (or written)."""
    await unsent.send(sink, records)
    return len(unsent) == 0


def tool_records(db: Path) -> list[AuditRecord]:
    with sqlite3.connect(db) as conn:
        return [r for r in iter_records(conn) if r.type.startswith("tool.")]


async def test_refused_records_are_held_in_order_and_sent_when_a_log_takes_them(tmp_path: Path) -> None:
    broken = _closed(tmp_path)
    unsent = Unsent()
    assert not await _sent(unsent, broken, [FIRST])
    assert not await _sent(unsent, broken, [SECOND])
    assert [(kind, {k: v for k, v in d.items() if k != "held_since_ns"}) for kind, d in unsent.held()] == [
        FIRST,
        SECOND,
    ]
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await _sent(unsent, working)
    working.close()
    assert unsent.held() == []
    records = tool_records(tmp_path / "b.db")
    assert [r.type for r in records] == [FIRST[0], SECOND[0]]
    assert records[0].details["fingerprint"] == ["1"]
    assert records[1].details["status"] == "revoked"


async def test_records_a_writer_took_and_then_failed_are_kept_and_sent_later(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    break_audit_log(tmp_path / "a.db")  # the log accepts the records; its writer cannot commit them
    assert not await _sent(unsent, log, [FIRST, SECOND])
    assert [kind for kind, _ in unsent.held()] == [FIRST[0], SECOND[0]]  # dropped once queued, before
    log.close()
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await _sent(unsent, working)
    working.close()
    assert [r.type for r in tool_records(tmp_path / "b.db")] == [FIRST[0], SECOND[0]]


async def test_through_the_metrics_tee_too(tmp_path: Path) -> None:
    # the gateway's sink with metrics on: the tee waits for the log's commit as well
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    break_audit_log(tmp_path / "a.db")
    assert not await _sent(unsent, MetricsSink(log, GatewayMetrics()), [FIRST])
    assert [kind for kind, _ in unsent.held()] == [FIRST[0]]
    log.close()
    assert await _sent(unsent, MetricsSink(LoggingSink(), GatewayMetrics()))  # a sink with no commit
    assert unsent.held() == []


async def test_a_record_sent_late_carries_when_it_was_acted_on(tmp_path: Path) -> None:
    unsent = Unsent()
    assert not await _sent(unsent, _closed(tmp_path), [SECOND])  # a revocation the log refused
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await working.record(Event.TOOL_DRIFT, {"tool": "s__u"}) is not None  # recorded at once, later
    assert await _sent(unsent, working, [FIRST])  # FIRST went at once: no stamp
    working.close()
    drift, revoked, prompt = tool_records(tmp_path / "b.db")
    assert [drift.type, revoked.type, prompt.type] == [Event.TOOL_DRIFT, SECOND[0], FIRST[0]]
    # the timeline: the revocation took effect before the drift recorded ahead of it
    assert revoked.details["held_since_ns"] < drift.ts_ns < revoked.ts_ns
    assert "held_since_ns" not in prompt.details


async def test_past_its_bound_the_oldest_are_dropped(tmp_path: Path) -> None:
    broken = _closed(tmp_path)
    unsent = Unsent(cap=2)
    for n in range(3):
        await unsent.send(broken, [(Event.TOOL_KEYS_CHANGED, {"upstreams": [str(n)]})])
    assert [d["upstreams"] for _, d in unsent.held()] == [["1"], ["2"]]  # the newest kept, in order


async def test_at_the_bound_a_record_in_flight_is_not_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The oldest record was dropped at the cap though the writer held it (its commit
    pending): logged "never recorded", then written all the same. Now the oldest NOT in
    flight goes; the one in flight stays until its commit comes."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent(cap=2)
    keys = [(Event.TOOL_KEYS_CHANGED, {"upstreams": [str(n)]}) for n in range(4)]
    with Stall(log):
        unsent.keep(*keys[0])
        [flying] = unsent.queue(log)  # in the writer's queue, commit pending
        with caplog.at_level(logging.ERROR, logger="symbi.events"):
            for kind, details in keys[1:]:
                unsent.keep(kind, details)
        assert [d["upstreams"] for _, d in unsent.held()] == [["0"], ["2"], ["3"]]
        lost = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
        assert len(lost) == 1  # ["1"]: never queued, the oldest waiting
    with anyio.fail_after(10):
        assert await flying > 0
        assert await _sent(unsent, log)
    log.close()
    assert [r.details["upstreams"] for r in tool_records(tmp_path / "a.db")] == [["0"], ["2"], ["3"]]
    assert not len(unsent)


async def test_records_in_flight_do_not_shrink_the_bound_of_those_waiting(tmp_path: Path) -> None:
    """With several in flight and fewer than ``cap`` waiting, a negative slice dropped all but
    a few of the waiting records at the next keep, under the bound."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent(cap=4)
    with Stall(log):
        for n in range(3):
            unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": [str(n)]})
        assert len(unsent.queue(log)) == 3  # in flight: the writer's
        for n in range(3, 7):  # four waiting: at the bound, none over it
            unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": [str(n)]})
        assert [d["upstreams"][0] for _, d in unsent.held()] == [str(n) for n in range(7)]
    with anyio.fail_after(10):
        assert await _sent(unsent, log)
    log.close()
    assert len(tool_records(tmp_path / "a.db")) == 7


async def test_records_whose_commit_failed_count_against_the_bound_again(tmp_path: Path) -> None:
    """The records waiting are counted (the bound walks nothing on each keep while ``cap``
    records are in flight): one whose commit failed waits again and counts again."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent(cap=2)
    break_audit_log(tmp_path / "a.db")
    assert not await _sent(unsent, log, [FIRST, SECOND])  # taken by the writer, then failed
    unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": ["3"]})  # three waiting: over the bound
    assert [kind for kind, _ in unsent.held()] == [SECOND[0], Event.TOOL_KEYS_CHANGED]
    log.close()


async def test_commits_failing_past_the_bound_drop_the_oldest_waiting_at_once(tmp_path: Path) -> None:
    """Records in flight whose commits fail wait again: past ``cap`` the oldest are dropped
    then, not at some later ``keep`` (a dying writer failing ``cap`` commits doubled the bound
    until one came)."""
    import asyncio

    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent(cap=2)
    break_audit_log(tmp_path / "a.db")
    unsent.keep(*FIRST)
    unsent.keep(*SECOND)
    flying = unsent.queue(log)  # taken by the writer: none waiting
    unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": ["3"]})
    with anyio.fail_after(10):
        await asyncio.wait(flying)
    await anyio.lowlevel.checkpoint()
    assert [kind for kind, _ in unsent.held()] == [SECOND[0], Event.TOOL_KEYS_CHANGED]
    log.close()


async def test_a_record_dropped_at_once_by_the_bound_is_refused_not_another_commit(tmp_path: Path) -> None:
    """``submit`` took the last held record as its own; with the new one dropped by the bound
    that was another record's commit (or an IndexError)."""
    from gateway.errors import AuditError

    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    with pytest.raises(AuditError):
        Unsent(cap=0).submit(working, *FIRST)
    working.close()


async def test_the_operators_record_goes_behind_the_held_ones_and_is_held_when_refused(
    tmp_path: Path,
) -> None:
    """``submit``: the held records are queued first (the chain keeps the order things were
    done in); refused, the new one is held behind them, stamped, and the refusal raised."""
    from gateway.errors import AuditError

    unsent = Unsent()
    with pytest.raises(AuditError):
        unsent.submit(_closed(tmp_path), *FIRST)
    assert [kind for kind, _ in unsent.held()] == [FIRST[0]]
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    with anyio.fail_after(10):
        assert await unsent.submit(working, *SECOND, principal="key:alice") > 0
    working.close()
    records = tool_records(tmp_path / "b.db")
    assert [r.type for r in records] == [FIRST[0], SECOND[0]]
    assert "held_since_ns" in records[0].details and "held_since_ns" not in records[1].details
    assert records[1].principal == "key:alice" and not len(unsent)


async def test_records_in_flight_when_the_writer_dies_are_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer dying of an unexpected exception (seam: its real ``commit_events`` replaced
    by one that raises) left their commits pending for ever: held in flight, never sent again."""
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()

    def boom(*_args: object, **_kw: object) -> bool:
        raise RuntimeError("a bug in the writer")

    with Stall(log):
        unsent.keep(*FIRST)
        unsent.keep(*SECOND)
        flying = unsent.queue(log)
        monkeypatch.setattr(log._writer, "commit_events", boom)
    with anyio.fail_after(10):
        assert not await _sent(unsent, log)  # failed, then refused: the log is broken
    assert all(f.done() for f in flying)
    log.close()
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await _sent(unsent, working)
    working.close()
    records = tool_records(tmp_path / "b.db")
    assert [r.type for r in records] == [FIRST[0], SECOND[0]]
    assert all("held_since_ns" in r.details for r in records)


async def test_record_acted_drops_a_refused_record_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken, working = _closed(tmp_path), AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        record_acted(broken, *FIRST, principal="key:admin")  # acted on all the same: logged (no raise)
    record_acted(working, *SECOND, principal="key:ops")
    working.close()
    [revoked] = tool_records(tmp_path / "b.db")
    assert (revoked.type, revoked.principal) == (SECOND[0], "key:ops")
    # its one trace: the kind, the details and who acted (an approval's details name no approver)
    [line] = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
    args = cast(tuple[object, ...], line.args)
    assert args[0] == FIRST[0]
    assert args[-1] == {**FIRST[1], "recorded_as": {"principal": "key:admin"}}


async def test_a_record_the_bound_drops_is_logged_with_its_details_and_who_acted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    unsent = Unsent(cap=1)
    unsent.keep(*FIRST, principal="key:admin")
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        unsent.keep(*SECOND)  # over the bound: the oldest, FIRST, dropped
    assert [kind for kind, _ in unsent.held()] == [SECOND[0]]
    [line] = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
    args = cast(tuple[object, ...], line.args)
    assert args[0] == FIRST[0]
    assert args[-1] == {**FIRST[1], "recorded_as": {"principal": "key:admin"}}  # (only its kind was logged)


def test_who_acted_is_traced_beside_a_target_named_principal(caplog: pytest.LogCaptureFixture) -> None:
    # an operator's suspension of a principal names its target "principal" in its details: who
    # acted was written over it, and the one trace of that record lost whom it suspended
    unsent = Unsent(cap=1)
    unsent.keep(Event.PRINCIPAL_SUSPEND_REQUESTED, {"principal": "key:bob", "by": "alice"}, principal="alice")
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        unsent.keep(*SECOND)  # over the bound: the suspension's record dropped, logged
    [line] = [r for r in caplog.records if r.name == "symbi.events" and r.levelno == logging.ERROR]
    traced = cast(dict[str, object], cast(tuple[object, ...], line.args)[-1])
    assert traced["principal"] == "key:bob" and traced["recorded_as"] == {"principal": "alice"}


async def test_a_stalled_commit_is_queued_once_however_often_it_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a send's wait ends before the commit; the record stays queued in the writer. Each send
    # queued another copy (counted as refused): N passes, N copies, the writer's queue growing
    monkeypatch.setattr(events, "COMMIT_WAIT_S", 0.1)
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    with Stall(log):
        assert not await _sent(unsent, log, [FIRST, SECOND])
        for _ in range(3):
            assert not await _sent(unsent, log)  # still in flight: waited on, not queued again
        assert len(unsent) == 2
    with anyio.fail_after(10):
        while not await _sent(unsent, log):  # the sender's next passes
            pass
    log.close()
    assert [r.type for r in tool_records(tmp_path / "a.db")] == [FIRST[0], SECOND[0]]
    assert not len(unsent)


async def test_a_cancelled_send_leaves_its_records_in_flight(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    with Stall(log), anyio.move_on_after(0.2):  # the task sending is cancelled while the disk hangs
        await unsent.send(log, [SECOND])
    assert await _sent(unsent, log)  # committed once: its queued event, not a copy of it
    log.close()
    assert [r.type for r in tool_records(tmp_path / "a.db")] == [SECOND[0]]


async def test_a_cancelled_send_whose_commit_fails_goes_again_stamped(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    with Stall(log):
        with anyio.move_on_after(0.2):
            await unsent.send(log, [SECOND])
        break_audit_log(tmp_path / "a.db")  # the writer, once it moves, cannot commit it
    assert not await _sent(unsent, log)
    log.close()
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await _sent(unsent, working)
    working.close()
    [revoked] = tool_records(tmp_path / "b.db")
    assert "held_since_ns" in revoked.details  # sent again, after the time it was acted on


async def test_the_metrics_tee_counts_a_held_record_once_committed(tmp_path: Path) -> None:
    metrics = GatewayMetrics()
    log = AuditLog(tmp_path / "a.db", tmp_path / "a-key.pem")
    unsent = Unsent()
    break_audit_log(tmp_path / "a.db")
    for _ in range(3):  # failed by the writer, then refused by the broken log
        assert not await _sent(unsent, MetricsSink(log, metrics), [FIRST] if not len(unsent) else [])
    log.close()

    def counted() -> float | None:
        return metrics.registry.get_sample_value("symbi_audit_events_total", {"event_type": FIRST[0]})

    assert not counted()  # every attempt was counted, none of them recorded
    working = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem")
    assert await _sent(unsent, MetricsSink(working, metrics))
    working.close()
    assert counted() == 1.0


async def test_a_record_held_after_the_log_refused_for_good_is_logged_once_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # never sent to that log again, logged only at stop: a CLI revoke held after the refusal
    # left no trace at all if the process was then killed (the stop's line never written)
    broken, unsent = _closed(tmp_path), Unsent()
    assert not await _sent(unsent, broken, [FIRST])  # refused: said once
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        unsent.keep(*SECOND)
        assert unsent.queue(broken) == [] and unsent.queue(broken) == []
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and SECOND[0] in lines[0] and "revoked" in lines[0], lines


async def test_the_records_held_when_the_log_refuses_for_good_get_their_lines_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # one count line before: their details only at the stop's ``abandon``, lost to a kill
    broken, unsent = _closed(tmp_path), Unsent()
    unsent.keep(*FIRST)
    with caplog.at_level(logging.ERROR, logger="symbi.events"):
        assert not await _sent(unsent, broken, [SECOND])
    said = [r.args for r in caplog.records if r.levelno == logging.ERROR and isinstance(r.args, tuple)]
    details = [cast(dict[str, Any], a[-1]) for a in said]  # (each line's details: a dict)
    assert [
        (a[0], {k: v for k, v in d.items() if k != "held_since_ns"})
        for a, d in zip(said, details, strict=True)
    ] == [
        FIRST,
        SECOND,
    ]


async def test_a_record_failing_after_a_log_refused_for_good_is_logged_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record in flight when its log refused for good (its writer broke the log before its
    batch's commits settled on the loop) was held again with a DEBUG line only: never sent
    again, no trace until the stop, lost to a kill. It gets its line when its commit fails.
    One real log, as in production: an emit nobody waits for in the failed batch breaks it."""
    from gateway.errors import AuditError

    log = AuditLog(tmp_path / "w.db", tmp_path / "w-key.pem")
    unsent = Unsent()
    try:
        with Stall(log):
            flying = unsent.submit(log, *FIRST, principal="key:admin")  # in flight, stalled
            emitter = threading.Thread(target=log.emit, args=(Event.TOOL_DRIFT, {"tool": "s__u"}))
            emitter.start()  # (off the loop: queued at once, in the same batch)
            emitter.join(10)
            assert not emitter.is_alive()  # (queued, behind the stall)
            break_audit_log(tmp_path / "w.db")  # its batch fails when the writer moves
            caplog.clear()
            caplog.set_level(logging.ERROR, logger="symbi.events")
        deadline = time.monotonic() + 30  # the loop held: the commit's failure not settled yet
        while log.unwritable() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)  # noqa: ASYNC251 - the loop held on purpose
        with pytest.raises(AuditError):
            unsent.submit(log, *SECOND)  # refused for good, before FIRST's commit settles
        assert not flying.done()
        with anyio.fail_after(30):
            while not flying.done():
                await anyio.sleep(0.01)
        await anyio.lowlevel.checkpoint()  # (its done-callbacks run)
        assert flying.exception() is not None
        said = [cast(tuple[object, ...], r.args) for r in caplog.records if r.levelno == logging.ERROR]
        mine = [a for a in said if a[0] == FIRST[0]]
        assert len(mine) == 1, said
        details = cast(dict[str, object], mine[0][-1])
        assert details["recorded_as"] == {"principal": "key:admin"} and details["fingerprint"] == ["1"]
    finally:
        log.close()


async def test_a_failed_commit_is_not_said_refused_for_good_by_another_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two real logs: A refused for good (closed), B's writer stalled with a record in flight,
    then failing it (a full disk, not broken for good: every record in it was waited for).
    The record was logged "refused for good" with A's refusal: a wrong cause, and a record
    said never to be sent again that B, once mended, takes. It is held, to be sent again."""
    from gateway.errors import AuditError

    refusing, log = _closed(tmp_path), AuditLog(tmp_path / "w.db", tmp_path / "w-key.pem")
    unsent = Unsent()
    try:
        with pytest.raises(AuditError) as refused:
            unsent.submit(refusing, *SECOND)  # A: refused for good
        caplog.clear()  # (A's own lines said): from here, nothing may blame A
        caplog.set_level(logging.ERROR, logger="symbi.events")
        with Stall(log):
            flying = unsent.submit(log, *FIRST)  # B: in flight, behind SECOND (sent to B too)
            break_audit_log(tmp_path / "w.db")
        with anyio.fail_after(30):
            while not flying.done():
                await anyio.sleep(0.01)
        await anyio.lowlevel.checkpoint()  # (its done-callbacks run)
        assert isinstance(flying.exception(), AuditError)
        blamed = [r for r in caplog.records if isinstance(r.args, tuple) and refused.value in r.args]
        assert blamed == [], [r.getMessage() for r in blamed]
        assert log.unwritable() is None and unsent.refused_by(log) is None  # B is not broken
        assert FIRST[0] in [k for k, _ in unsent.held()]  # held, sent to B again
    finally:
        log.close()


async def test_held_is_asked_of_the_record_itself_not_of_an_equal_one(tmp_path: Path) -> None:
    """Attack on ``holds``: two equal records (the same admin's two policy reloads) are two
    actions. One committed, or dropped by the bound, is not held because an equal one is (an
    equality check answered its waiter "held": a record written, or held nowhere)."""
    from gateway.errors import AuditError

    reload = (Event.POLICY_RELOAD_REQUESTED, {"by": "key:admin", "reloaded": True})
    committed, held = dict(reload[1]), dict(reload[1])
    working, broken = AuditLog(tmp_path / "b.db", tmp_path / "b-key.pem"), _closed(tmp_path)
    unsent = Unsent(cap=1)
    with anyio.fail_after(10):
        assert await unsent.submit(working, reload[0], committed) > 0
    working.close()
    with pytest.raises(AuditError):
        unsent.submit(broken, reload[0], held)  # refused: held
    assert unsent.holds(held) and not unsent.holds(committed) and not unsent.holds(dict(held))
    dropped, held = held, dict(reload[1])
    unsent.keep(reload[0], held)  # over the bound (1): the older equal one dropped
    assert unsent.holds(held) and not unsent.holds(dropped)
    assert len(unsent) == 1
