"""A terminate answered on the process that runs an on-demand hosted agent never run there
(no record, a start pending): it withdraws the start, as one answered elsewhere does
(``gateway.server.pending``). Real replicas on one real Redis, real bwrap runs."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import jsonschema
import pytest
import redis

from gateway.runtime import hosted, leased
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.leased import LeasedAgents
from gateway.runtime.orders import OPERATOR_EVENTS, Order
from gateway.server.openapi import OPENAPI
from gateway.server.operations import act_on_agent
from gateway.state import leases
from gateway.state.leases import ORDERS, WAKE, WITHDRAWN
from tests.runtime._leases import (
    NAME,
    START_S,
    _until,
    first_start_refused,
    nothing_ran,
    redis_now,
    replica,
)
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio


def _admin(h: HostedAgents, ops: Recorder) -> Any:
    """The HTTP state the admin API and the dashboard act through, on replica ``h``."""
    gw = SimpleNamespace(hosted=h, runtime=h.runtime, audit=None, events=ops, state=None)
    return cast(Any, SimpleNamespace(config=h.config, gateway=gw))


def _withdrawn(status: int, body: dict[str, Any], ops: Recorder) -> None:
    assert status == 200 and body["withdrawn"] is True and body["state"] is None
    jsonschema.validate(body, OPENAPI["components"]["schemas"]["AgentAction"])  # its 200's schema
    assert [t for t, *_ in ops.events] == ["agent.terminate_requested"]


def _idle_holder(
    tmp_path: Path, url: str, mark: str, rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> tuple[HostedAgents, LeasedAgents, redis.Redis]:
    """Replica a for an on-demand agent whose renewals come only when poked (``RENEW_S`` 60 s,
    a lease that outlives the test), its lease runner, and a client on its Redis."""
    monkeypatch.setattr(leased, "RENEW_S", 60.0)
    a = replica(tmp_path / "a", url, mark, rec, start="on-demand")
    la = a.leased
    assert la is not None
    la.board.ttl_ms = 300_000
    return a, la, redis.Redis.from_url(url)


def _start_from_b(r: redis.Redis) -> None:
    """A start another replica left on Redis, as b's ``LeaseBoard.wake`` writes it."""
    r.eval(leases._WAKE, 2, WAKE + NAME, WITHDRAWN + NAME, "replica-b", "")


async def test_a_terminate_on_the_holder_withdraws_a_first_start_its_log_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """The holder's first start refused by a broken log waits for the retry (no record yet):
    a terminate on the holder answered 404 and withdrew nothing, so it ran once the log
    mended. Now it is withdrawn (200, ``withdrawn``, recorded) and nothing runs."""
    mark = f"0.6029{os.getpid()}"
    async with first_start_refused(tmp_path / "a", fresh.url, mark, monkeypatch) as (a, _, rec):
        rec.broken = False
        ops = Recorder()
        status, body = await act_on_agent(_admin(a, ops), NAME, "terminate", "ops", "not wanted")
        _withdrawn(status, body, ops)
        # the retry's wait over (``refusing`` is left in the step after it), then the
        # supervisor's next step: it takes a start left to it at once (one checkpoint) and
        # counts the run before its first await, so once every task waits none was taken
        await _until("the retry's wait over", lambda: NAME not in a.refusing, hosted.AUDIT_RETRY_S + 10)
        await nothing_ran(a, mark)


async def test_a_terminate_on_the_holder_withdraws_a_start_on_redis_not_taken_yet(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start another replica left on Redis, not taken by the holder's renewal yet: a
    terminate on the holder answered 404 and the next renewal ran it. Now it is withdrawn."""
    mark = f"0.6030{os.getpid()}"
    rec = Recorder()
    a, la, r = _idle_holder(tmp_path, fresh.url, mark, rec, monkeypatch)  # the start untaken until poked
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        _start_from_b(r)
        ops = Recorder()
        status, body = await act_on_agent(_admin(a, ops), NAME, "terminate", "ops", "not wanted")
        _withdrawn(status, body, ops)
        assert not r.exists(WAKE + NAME)
        # a control the renewal must act on: a suspend b passed (refused here, never run). Its
        # record is made by the renewal's orders, after which the start it took (none now) is
        # handed to the supervisor in the same step, and taken by it at its next
        order = Order(action="suspend", by="ops", reason="control", via="replica-b", at=redis_now(r))
        r.rpush(ORDERS + NAME, order.dumps())
        la._changed[NAME].set()  # a renewal now: a start left would be taken and run
        await _until("renewed", lambda: any(t == OPERATOR_EVENTS["suspend"] for t, *_ in rec.events), 10)
        await nothing_ran(a, mark)
        tg.cancel_scope.cancel()


async def _let_go_and_nothing_ran(a: HostedAgents, mark: str, go_on: anyio.Event, taken: anyio.Event) -> None:
    """The held renewal let go: once it has read its orders, the start it took is handed on or
    dropped in that same step; none was (no run, no wake left set, no process)."""
    go_on.set()
    with anyio.fail_after(10):
        await taken.wait()
    await nothing_ran(a, mark)


async def test_a_terminate_while_the_renewal_takes_the_start_stops_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """A terminate on the holder whose DEL reaches Redis just after a renewal took the start
    (it found nothing): its mark was dropped with the DEL's success, and the renewal, reading
    its orders meanwhile, handed the start on: the terminated agent ran. The mark stays now
    when the DEL found nothing, and the renewal drops the start it took; the operator is
    answered ``withdrawn`` (it was 404, "no start pending")."""
    mark = f"0.6034{os.getpid()}"
    a, la, r = _idle_holder(tmp_path, fresh.url, mark, Recorder(), monkeypatch)  # the one renewal: poked
    at_orders, go_on, taken = anyio.Event(), anyio.Event(), anyio.Event()
    take_orders = la.board.take_orders

    async def held_at_orders(name: str) -> tuple[list[bytes], float]:
        at_orders.set()  # the renewal has taken the start (woken), its orders not read yet
        await go_on.wait()
        got = await take_orders(name)
        taken.set()
        return got

    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        monkeypatch.setattr(la.board, "take_orders", held_at_orders)
        _start_from_b(r)
        la._changed[NAME].set()
        with anyio.fail_after(10):
            await at_orders.wait()
        assert not r.exists(WAKE + NAME)  # the renewal took it
        status, body = await act_on_agent(_admin(a, Recorder()), NAME, "terminate", "ops", "not wanted")
        assert status == 200 and body["withdrawn"]  # (it was 404: the DEL found nothing)
        await _let_go_and_nothing_ran(a, mark, go_on, taken)
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("held", ["reply", "orders"])
async def test_a_terminate_whose_delete_finds_a_later_start_while_the_renewal_takes_one_stops_both(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
    held: str,
) -> None:
    """A renewal took a start (its reply on its way, or its orders not read yet), another start
    was asked, then a terminate on the holder: its DEL deleted the second, and its mark went
    with that success, so the renewal handed the first on: the terminated agent ran. The mark
    is kept through a renewal; the first is dropped too."""
    mark = f"0.6049{os.getpid()}"
    a, la, r = _idle_holder(tmp_path, fresh.url, mark, Recorder(), monkeypatch)  # the one renewal: poked
    at_orders, go_on, taken = anyio.Event(), anyio.Event(), anyio.Event()
    take_orders, renew_script = la.board.take_orders, la.board.renew_script

    async def held_at_orders(name: str) -> tuple[list[bytes], float]:
        if held == "orders":
            at_orders.set()  # the renewal has taken the first start, its orders not read yet
            await go_on.wait()
        got = await take_orders(name)
        taken.set()
        return got

    async def held_reply(**kw: Any) -> Any:
        got = await renew_script(**kw)
        if held == "reply":
            at_orders.set()  # the script took the first start, its reply not handled yet
            await go_on.wait()
        return got

    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        monkeypatch.setattr(la.board, "take_orders", held_at_orders)
        monkeypatch.setattr(la.board, "renew_script", held_reply)
        _start_from_b(r)
        la._changed[NAME].set()
        with anyio.fail_after(10):
            await at_orders.wait()
        _start_from_b(r)  # a second start, asked before the terminate too
        status, body = await act_on_agent(_admin(a, Recorder()), NAME, "terminate", "ops", "not wanted")
        assert status == 200 and body["withdrawn"] and not r.exists(WAKE + NAME)  # the DEL took it
        await _let_go_and_nothing_ran(a, mark, go_on, taken)
        tg.cancel_scope.cancel()


async def test_a_terminate_of_an_agent_with_no_start_pending_is_still_not_found(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """Nothing pending and never run here: 404 as before, nothing recorded."""
    a = replica(tmp_path / "a", fresh.url, f"0.6031{os.getpid()}", Recorder(), start="on-demand")
    la = a.leased
    assert la is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        ops = Recorder()
        status, body = await act_on_agent(_admin(a, ops), NAME, "terminate", "ops", "not wanted")
        assert status == 404 and body["error"] == "not_found" and not ops.events
        tg.cancel_scope.cancel()


async def test_a_terminate_on_the_holder_deletes_the_start_on_redis_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """The holder's terminate marked the start for its lease's loop and deleted it on Redis
    at once: the mark stayed, and the loop's next turn deleted it again. Now the delete done
    at once takes the mark with it."""
    # no renewal meanwhile: the mark would stay
    a, la, r = _idle_holder(tmp_path, fresh.url, f"0.6032{os.getpid()}", Recorder(), monkeypatch)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        _start_from_b(r)
        dels: list[float | None] = []
        unwake = la.board.unwake

        async def counted(name: str, before: float | None = None) -> bool:
            dels.append(before)
            return await unwake(name, before)

        monkeypatch.setattr(la.board, "unwake", counted)
        ops = Recorder()
        status, body = await act_on_agent(_admin(a, ops), NAME, "terminate", "ops", "not wanted")
        _withdrawn(status, body, ops)
        turns: list[str] = []
        take_orders = la.board.take_orders

        async def taken(name: str) -> tuple[list[bytes], float]:
            turns.append(name)  # the turn's last step: a mark left was deleted before it
            return await take_orders(name)

        monkeypatch.setattr(la.board, "take_orders", taken)
        la._changed[NAME].set()  # the loop's turn: a mark left is deleted at it
        await _until("renewed", lambda: NAME in turns, 10)
        assert not r.exists(WAKE + NAME) and NAME not in la._unwake and len(dels) == 1, dels
        tg.cancel_scope.cancel()


async def test_a_suspend_of_a_hosted_agent_never_run_is_not_found(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """Only a terminate has something to act on in an agent never run here (its start): a
    suspend or a resume of one is 404, nothing recorded, as of any agent unknown here."""
    a = replica(tmp_path / "a", fresh.url, f"0.6033{os.getpid()}", Recorder(), start="on-demand")
    la = a.leased
    assert la is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        ops = Recorder()
        for action in ("suspend", "resume"):
            status, body = await act_on_agent(_admin(a, ops), NAME, action, "ops", "x")
            assert status == 404 and body["error"] == "not_found" and not ops.events
        tg.cancel_scope.cancel()
