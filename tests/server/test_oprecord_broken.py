"""Attack: an operator's action with the audit log broken for good (an emit nobody waited for
was lost: the log refuses everything after, for the process's life). The 503 said the record
was "held and written once the log commits again" (``held: true``), which no longer happens
without a restart; and the approvals poll's sender re-sent it every recheck interval, two
ERRORs each time, for the rest of the process. Now the answer says it is not held and a
restart is needed, and the refusal is logged once. A real gateway over HTTP with
server-everything; the disk fills as in ``break_audit_log`` (a trigger refusing every insert)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import load_config
from gateway.errors import ActionUnrecorded, AuditError
from gateway.events import Event, EventSink, Unsent
from gateway.server import oprecord
from tests.conftest import Stall, break_audit_log
from tests.server.http.conftest import bearer, everything_config, make_keys, run_server

RECHECK_S = 0.2


def _errors(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.name == "symbi.events" and r.levelno >= logging.ERROR)


def _suspended_unrecorded(base: str, admin_key: str) -> dict[str, Any]:
    """An operator's suspend of key:bob, done and answered 503 ``action_unrecorded``: its body."""
    api = base + "/api/principals/suspend"
    r = httpx.post(api, json={"principal": "key:bob", "reason": "x"}, headers=bearer(admin_key))
    assert r.status_code == 503, r.text
    body: dict[str, Any] = r.json()
    assert (body["code"], body["done"]) == (ActionUnrecorded.code, True)
    return body


def test_a_record_failed_with_the_log_for_good_is_not_said_held_nor_sent_at_every_recheck(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = everything_config(tmp_path, top_extra=f"[mcp]\nrecheck_interval_s = {RECHECK_S}\n")
    keys = make_keys(cfg)
    caplog.set_level(logging.ERROR, logger="symbi.events")
    with run_server(cfg) as run:
        break_audit_log(load_config(cfg, {}).audit_path)
        body = _suspended_unrecorded(run.base, keys.admin)
        # "held" said it would be written once the log commits again: it never will
        assert (body["held"], body["pending"], body["restart_needed"]) == (False, False, True), body
        gw = run.state.gateway
        assert gw is not None

        unsent = gw.verifier.unsent
        refused_by, passes = unsent.refused_by, [0]

        def counted(sink: EventSink) -> AuditError | None:  # the sender asks it at each pass
            passes[0] += 1
            return refused_by(sink)

        monkeypatch.setattr(unsent, "refused_by", counted)
        deadline = time.monotonic() + 30  # the sender's first pass: refused, said once
        while refused_by(gw.events) is None:
            assert time.monotonic() < deadline, "the held record was not refused by the sender"
            time.sleep(0.05)
        said, seen = _errors(caplog), passes[0]
        while passes[0] < seen + 10:  # ten more passes of the sender (a fixed sleep: a stalled one passed)
            assert time.monotonic() < deadline + 30, f"the sender made {passes[0] - seen} passes"
            time.sleep(RECHECK_S)
        assert _errors(caplog) == said, [r.getMessage() for r in caplog.records]
        # still held, for the stop's last trace (``Unsent.abandon``)
        assert [k for k, _ in gw.verifier.unsent.held()].count(Event.PRINCIPAL_SUSPEND_REQUESTED) == 1


def test_a_record_dropped_at_once_by_the_bound_is_not_said_held(tmp_path: Path) -> None:
    """``Unsent.submit``'s own record dropped by the bound of held records (a log that failed
    long enough to fill it) was answered ``held: true``: it is held nowhere."""
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        gw = run.state.gateway
        assert gw is not None
        gw.verifier.unsent = Unsent(cap=0)  # full: a new record is dropped at once (logged)
        body = _suspended_unrecorded(run.base, keys.admin)
        assert (body["held"], body["pending"], body["restart_needed"]) == (False, False, False), body
        assert gw.verifier.unsent.held() == []


def _in_flight_then(
    tmp_path: Path, then: Callable[[Unsent, EventSink], None], cap: int | None = None, *, fails: bool = True
) -> tuple[ActionUnrecorded, Unsent]:
    """An operator's record in flight in a stalled writer (a real gateway over HTTP), ``then``
    done to the held records (and the gateway's sink) on the gateway's loop, the disk filled so
    its commit fails (``fails``; else answered while the writer is still stalled): the answer
    its waiter got, and the held records."""
    cfg = everything_config(tmp_path, top_extra="[mcp]\nrecheck_interval_s = 600.0\n")
    with run_server(cfg) as run:
        gw = run.state.gateway
        assert gw is not None and gw.audit is not None
        unsent = gw.verifier.unsent
        if cap is not None:
            unsent = gw.verifier.unsent = Unsent(cap=cap)
        loop = run.server.servers[0].get_loop()

        async def act() -> asyncio.Task[ActionUnrecorded | None]:
            mine = asyncio.ensure_future(
                oprecord.record_action(
                    gw, Event.PRINCIPAL_SUSPEND_REQUESTED, {"principal": "key:bob"}, principal="alice"
                )
            )
            await asyncio.sleep(0)  # its first step: submitted, in flight (the writer stalled)
            assert len(unsent) == 1
            then(unsent, gw.events)
            return mine

        async def answer(mine: asyncio.Task[ActionUnrecorded | None]) -> ActionUnrecorded | None:
            return await mine

        with Stall(gw.audit):
            if fails:
                break_audit_log(load_config(cfg, {}).audit_path)  # its commit fails once the disk moves
            mine = asyncio.run_coroutine_threadsafe(act(), loop).result(timeout=30)
            if not fails:
                unrec = asyncio.run_coroutine_threadsafe(answer(mine), loop).result(timeout=60)
        if fails:
            unrec = asyncio.run_coroutine_threadsafe(answer(mine), loop).result(timeout=60)
        assert unrec is not None
        return unrec, unsent


def test_a_record_the_bound_drops_as_its_commit_fails_is_not_said_held(tmp_path: Path) -> None:
    """The bound full (``cap``: 1 here, 10,000 in production): the operator's record is in
    flight in a stalled writer, a later held record behind it; the disk fills and the batch
    fails. Both come back held at once (one wake-up per batch, before the request's own), one
    over the bound: the oldest, the operator's, is dropped (logged). It was answered
    ``held: true``, a record held nowhere."""

    def behind(unsent: Unsent, sink: EventSink) -> None:  # a later one behind it: one batch
        unsent.keep(Event.TOOL_KEYS_CHANGED, {"upstreams": ["everything"]})
        unsent.queue(sink)

    unrec, unsent = _in_flight_then(tmp_path, behind, cap=1)
    kinds = [k for k, _ in unsent.held()]
    assert Event.PRINCIPAL_SUSPEND_REQUESTED not in kinds, kinds  # dropped by the bound
    assert unrec.state == "dropped", (unrec.state, kinds)
    status, body = oprecord.with_record(unrec, 200, {})
    assert status == 503 and (body["held"], body["pending"], body["restart_needed"]) == (False,) * 3


def test_a_record_let_go_by_the_stop_whose_commit_then_fails_is_not_said_dropped(tmp_path: Path) -> None:
    """The gateway stops (``Unsent.abandon``: the verifier's close) while the operator's record
    is in flight in a stalled writer; its commit then fails. Its waiter was answered
    ``dropped``, "over the bound of records held": no bound dropped it, the stop let it go
    (and logged it). Now the answer says the gateway stopped first (no flag: nor held, nor
    queued, nor mended by a restart)."""
    unrec, _ = _in_flight_then(tmp_path, lambda unsent, _: unsent.abandon())  # the stop: let go, logged
    assert unrec.state == "stopped", unrec.state
    status, body = oprecord.with_record(unrec, 200, {})
    assert status == 503 and body["code"] == ActionUnrecorded.code and body["done"] is True
    assert (body["held"], body["pending"], body["restart_needed"]) == (False,) * 3


def _stopped_then_cancelled(unsent: Unsent, sink: EventSink) -> None:
    [commit] = unsent.queue(sink)  # the one in flight: the operator's
    unsent.abandon()  # the stop: let go, logged
    commit.cancel()


def _cancelled(unsent: Unsent, sink: EventSink) -> None:
    [commit] = unsent.queue(sink)
    commit.cancel()  # no stop: the event stays in the writer's queue, written when it moves


def test_a_record_let_go_by_the_stop_while_its_commit_stalls_is_not_said_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop lets the operator's record go (``Unsent.abandon``, logged) while the writer
    stalls; the wait then ends. It was answered ``pending``, "it stays queued and is written
    when the disk moves": nothing holds it any more. Now: the gateway stopped first."""
    monkeypatch.setattr(oprecord, "RECORD_WAIT_S", 1.0)
    unrec, _ = _in_flight_then(tmp_path, lambda unsent, _: unsent.abandon(), fails=False)
    assert unrec.state == "stopped", unrec.state


@pytest.mark.parametrize(("then", "state"), [(_stopped_then_cancelled, "stopped"), (_cancelled, "pending")])
def test_a_cancelled_commit_is_said_stopped_only_when_the_stop_let_it_go_first(
    tmp_path: Path, then: Callable[[Unsent, EventSink], None], state: str
) -> None:
    """A commit cancelled after the stop let the record go was answered ``pending`` (queued,
    written when the disk moves): the stop logged it as never committed. One cancelled with
    no stop is still the writer's: ``pending``."""
    unrec, _ = _in_flight_then(tmp_path, then, fails=False)
    assert unrec.state == state, unrec.state
