"""Starts of an on-demand hosted agent under shared state (``gateway.runtime.leased``), on a
real Redis with real bwrap runs: a start passed to the holder, taken, withdrawn by a terminate,
or passed on when the holder stops. (Split from tests/runtime/test_leased.py, near 500 lines.)
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import jsonschema
import pytest
import redis
from anyio import wait_all_tasks_blocked

from gateway.runtime import hosted, leased
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.marks import Mark
from gateway.runtime.orders import Order
from gateway.server.openapi import OPENAPI
from gateway.server.operations import pass_hosted_action
from gateway.state import leases
from gateway.state.leases import LEASE, ORDERS, RENEW_S, START_TTL_MS, WAKE, WITHDRAWN
from tests.runtime._leases import (
    NAME,
    START_S,
    _running,
    _seen,
    _until,
    a_holds_b_waits,
    first_start_refused,
    marked,
    replica,
    stoppable,
)
from tests.runtime.test_core import BreakingRecorder, Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio


def _ended(h: HostedAgents) -> bool:
    agent = h.runtime.agents.by_name(NAME)
    return agent is not None and agent.state is AgentState.TERMINATED


async def _retried(a: HostedAgents) -> None:
    """The refused start's retry decided: its wait over (or cut short by the terminate), the
    supervisor has gone on to a run (``runs`` counted in the same step) or to wait for a start."""
    await _until("the retry's wait over", lambda: NAME not in a.refusing, hosted.AUDIT_RETRY_S + 5)
    await wait_all_tasks_blocked()


async def test_a_terminate_withdraws_a_start_no_holder_took_yet(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    """A start waits on Redis until a holder takes it (renewed by the replicas); a terminate
    asked while no replica holds the lease was answered "runs nowhere", and the start still
    ran when a holder came. The terminate withdraws it."""
    mark = f"6015.{os.getpid()}"
    ra, rb = BreakingRecorder(), BreakingRecorder()
    async with a_holds_b_waits(tmp_path, fresh.url, mark, ra, rb) as (a, b):
        ra.broken = rb.broken = True
        b.request_start(NAME)  # passed to a, which takes it, cannot run it and passes it on
        await _until("a let it go", lambda: a.leased is not None and not a.leased.holds(NAME), 4 * RENEW_S)
        await _until("no holder", lambda: b.leased is not None and not _seen(b.leased), 2 * RENEW_S)
        ops = Recorder()  # the admin API's record of the terminate (its own log works)
        state = cast(Any, SimpleNamespace(gateway=SimpleNamespace(hosted=b, audit=None, events=ops)))
        status, body = await pass_hosted_action(state, NAME, "terminate", "ops", "not wanted")
        assert status == 200 and body["withdrawn"] is True  # held nowhere, but a start withdrawn
        assert "state" in body and body["state"] is None  # the dashboard and AgentAction read it
        jsonschema.validate(body, OPENAPI["components"]["schemas"]["AgentAction"])  # its 200's schema
        assert [t for t, *_ in ops.events] == ["agent.terminate_requested"]
        rb.broken = False
        await _until(
            "b holds it", lambda: b.leased is not None and b.leased.holds(NAME), 2 * RENEW_S + START_S
        )
        await anyio.sleep(RENEW_S + START_S)  # a start taken would have run by now
        assert not marked(mark) and not _running(b)


async def test_a_start_taken_by_a_holder_that_then_loses_the_lease_is_run_by_the_next(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """An on-demand agent's start passed to its holder while a run is live: the holder takes it
    (to run once this run ends), then loses the lease and cannot take it back (its log broken).
    The start stayed in the holder's own memory: the next holder waited for a start that never
    came. Now the holder passes it on when its run is stopped, and the next holder runs it."""
    mark = f"6016.{os.getpid()}"
    rec = BreakingRecorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec, start="on-demand")
    b = replica(tmp_path / "b", fresh.url, mark, Recorder(), start="on-demand")
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: a.leased is not None and a.leased.holds(NAME), START_S)
        tg.start_soon(b.run)
        a.request_start(NAME)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        b.request_start(NAME)  # passed to a, which takes it at its next renewal
        # passed (b's wish gone), then taken (the key gone): no poll for the key's short life
        await _until(
            "taken by a",
            lambda: not (b.leased and b.leased._wanted) and not r.exists(WAKE + NAME),
            3 * RENEW_S,
        )
        rec.broken = True  # a cannot take the lease back
        r.set(LEASE + NAME, "forged", px=int(2 * RENEW_S * 1000))  # a loses it at its next renewal
        await _until("a's run stopped", lambda: not marked(mark) and not _running(a), RENEW_S + 5)
        await _until("b runs it", lambda: bool(marked(mark)) and _running(b), 2 * RENEW_S + START_S)
        assert len(marked(mark)) == 1
        tg.cancel_scope.cancel()


async def test_a_terminate_on_the_holder_withdraws_its_starts_also_when_the_holder_stops(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start taken by the holder for after its live run, then a terminate carried out on the
    holder: the start stayed in the holder's memory and was passed on when the holder stopped,
    so another replica ran the terminated agent; a start still on Redis was kept too. Now the
    terminate withdraws both, and the next holder runs nothing."""
    mark = f"6017.{os.getpid()}"
    a = replica(tmp_path / "a", fresh.url, mark, Recorder(), start="on-demand")
    b = replica(tmp_path / "b", fresh.url, mark, Recorder(), start="on-demand")
    assert a.leased is not None and b.leased is not None
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        scope_a = stoppable(tg, a)
        await _until("a holds it", lambda: a.leased is not None and a.leased.holds(NAME), START_S)
        tg.start_soon(b.run)
        a.request_start(NAME)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        b.request_start(NAME)  # passed to a, taken there for after this run
        await _until("taken by a", a._wake[NAME].is_set, 3 * RENEW_S)
        agent = a.runtime.agents.by_name(NAME)
        assert agent is not None
        r.set(WAKE + NAME, "another replica")  # a start on Redis a's renewal has not taken yet
        a.runtime.terminate(agent, "operator: not wanted")  # as the admin API / an order does
        await _until("a's run stopped", lambda: not marked(mark) and not _running(a), START_S)
        await _until("the start on Redis withdrawn", lambda: not r.exists(WAKE + NAME), 2 * RENEW_S)
        assert not a._wake[NAME].is_set()
        scope_a.cancel()  # a stops: it releases the lease, and passes on no start
        await _until("b holds it", lambda: b.leased is not None and b.leased.holds(NAME), 2 * RENEW_S)
        await anyio.sleep(RENEW_S + START_S)  # a start passed on would have run by now
        assert not marked(mark) and not _running(b) and not r.exists(WAKE + NAME)
        tg.cancel_scope.cancel()


async def test_a_start_for_an_agent_that_waits_for_none_is_not_passed_holder_to_holder(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start passed to the holder of a ``with-gateway`` agent is taken and never run (its
    supervisor waits for no start): each holder passed it on at its stop, to every next one
    for good. Now only an on-demand supervisor's start is passed on."""
    mark = f"6018.{os.getpid()}"
    a, b = (
        replica(tmp_path / "a", fresh.url, mark, Recorder()),
        replica(tmp_path / "b", fresh.url, mark, Recorder()),
    )
    assert a.leased is not None and b.leased is not None
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        scope_a = stoppable(tg, a)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        tg.start_soon(b.run)
        await _until("b sees a hold it", lambda: b.leased is not None and _seen(b.leased), 2 * RENEW_S)
        b.request_start(NAME)  # passed to a, which takes it (and has nothing to run it for)
        await _until("taken by a", a._wake[NAME].is_set, 3 * RENEW_S)
        scope_a.cancel()  # a stops: it releases the lease
        await _until("b runs it", lambda: len(marked(mark)) == 1 and _running(b), 2 * RENEW_S + START_S)
        await anyio.sleep(RENEW_S + 1)  # b's renewal would have taken a start a passed on
        assert not b._wake[NAME].is_set() and not r.exists(WAKE + NAME)
        tg.cancel_scope.cancel()


async def test_a_start_left_for_a_disabled_agent_is_deleted_at_start_and_no_other(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start lives while a replica has its agent: one left for an agent later disabled fired
    whenever it was enabled again, weeks later; the lease runner deletes it when it starts.
    Only the agents its own config disables: it SCANned the keyspace and deleted every start of
    an agent not in its config, so in a rolling deploy an old replica deleted the starts of an
    agent the new ones had enabled (and answered 202 for). A removed agent's start is left (it
    expires a day after the last replica with that agent, ``test_leases.py``)."""
    mark = f"6020.{os.getpid()}"
    a = replica(tmp_path / "a", fresh.url, mark, Recorder(), start="on-demand")
    a.config.agents[NAME] = a.config.agents[NAME].model_copy(update={"enabled": False})
    r = redis.Redis.from_url(fresh.url)
    r.set(WAKE + NAME, "another replica")  # disabled here
    r.set(WAKE + "newer", "a newer replica")  # not in this config: another replica's agent
    assert a.leased is not None
    await a.leased._drop_starts()  # what run() starts with
    assert not r.exists(WAKE + NAME)
    assert r.get(WAKE + "newer") == b"a newer replica"
    await a.leased.board.aclose()


async def test_a_terminate_during_a_withdrawal_is_kept_and_a_failed_one_keeps_the_start(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A second terminate carried out while the holder's loop deletes the first one's start:
    the name was discarded after the DEL, so the second withdrawal was lost (a start passed in
    between ran the terminated agent). And a terminate answered without the lease whose DEL
    failed (503, nothing done) had dropped a start asked here and not passed on yet."""
    a = replica(tmp_path / "a", fresh.url, "6021", Recorder(), start="on-demand")
    leased = a.leased
    assert leased is not None
    unwake = leased.board.unwake

    async def terminated_again(name: str, before: float | None = None) -> bool:
        leased.withdraw(name)  # another terminate, while this DEL is on its way
        return await unwake(name, before)

    leased.withdraw(NAME)
    leased.board.unwake = terminated_again  # type: ignore[method-assign]
    await leased._withdraw(NAME)
    assert NAME in leased._unwake  # the second one still to do
    leased.board.unwake = unwake  # type: ignore[method-assign]
    await leased._withdraw(NAME)
    assert NAME not in leased._unwake
    leased.request_elsewhere(NAME)  # asked here, not passed on yet (no lease loop runs)
    fresh.stop()
    leased.withdraw(NAME)
    await leased._withdraw(NAME)  # Redis down: kept for the next try
    assert NAME in leased._unwake
    leased._wanted[NAME] = Mark()
    with pytest.raises((redis.RedisError, OSError)):
        await leased.withdraw_start(NAME)
    assert NAME in leased._wanted  # the operator's 503 said nothing was done: nothing was
    fresh.start()
    await leased.board.aclose()


async def test_a_start_refused_by_a_broken_log_and_terminated_in_the_retry_does_not_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """An on-demand start refused by a broken audit log was set again after the retry's wait,
    even when an operator had terminated the agent during it: once the log mended, the
    terminated agent ran (or, the log still broken, its start was passed on at the let-go).
    Now the start is taken only once its run may start: the terminate withdraws it."""
    monkeypatch.setattr(leased, "RENEW_S", 60.0)  # no renewal lets it go between refusal and terminate
    monkeypatch.setattr(hosted, "AUDIT_RETRY_S", 1.0)
    mark = f"0.6023{os.getpid()}"  # sleeps under a second: the first run ends by itself
    rec = BreakingRecorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec, start="on-demand")
    la = a.leased
    assert la is not None
    la.board.ttl_ms = 300_000  # renewed every 60 s here
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        a.request_start(NAME)
        await _until("its first run ended", lambda: a.runs[NAME] == 1 and _ended(a), START_S)
        rec.broken = True
        assert a.request_start(NAME) == "starting"
        await _until("the start refused", lambda: NAME in a.refusing, 5)
        agent = a.runtime.agents.by_name(NAME)
        assert agent is not None
        a.runtime.terminate(agent, "operator: not wanted")  # as the admin API does, in the wait
        rec.broken = False
        await _retried(a)
        assert a.runs[NAME] == 1 and not marked(mark)
        assert not a._wake[NAME].is_set() and not la._wanted and not r.exists(WAKE + NAME)
        assert la.holds(NAME)
        tg.cancel_scope.cancel()


async def test_a_withdrawal_kept_through_an_outage_spares_a_start_asked_after_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A terminate on the holder while Redis cannot be reached keeps its withdrawal for later;
    carried out once Redis was back, it deleted whatever start was there, one asked after the
    terminate too (answered "start passed", and nothing ran). Now only a start asked by the
    terminate's time (on Redis's clock) is withdrawn: the new one runs."""
    mark = f"0.6026{os.getpid()}"  # sleeps under a second: the first run ends by itself
    a = replica(tmp_path / "a", fresh.url, mark, Recorder(), start="on-demand")
    la = a.leased
    assert la is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        a.request_start(NAME)
        await _until("its first run ended", lambda: a.runs[NAME] == 1 and _ended(a), START_S)
        agent = a.runtime.agents.by_name(NAME)
        assert agent is not None
        fresh.stop()
        a.runtime.terminate(agent, "operator: not wanted")  # its withdrawal cannot be done now
        # kept for when Redis is back (its DEL, in flight while redis-py retries, pops it a while)
        await _until("the withdrawal kept", lambda: NAME in la._unwake, 20)
        fresh.start()  # (blocking: a's loop cannot withdraw before the new start is written)
        r = redis.Redis.from_url(fresh.url)
        r.eval(
            leases._WAKE, 2, WAKE + NAME, WITHDRAWN + NAME, "replica-b", ""
        )  # a new start, as b's LeaseBoard.wake
        await _until("the new start runs", lambda: a.runs[NAME] == 2, 3 * RENEW_S + START_S)
        assert NAME not in la._unwake
        tg.cancel_scope.cancel()


async def test_a_start_kept_through_an_outage_is_withdrawn_by_a_terminate_asked_after_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """Redis down: ``symbi agents run`` answered by b (kept in b, 202), then a terminate on the
    holder a (its withdrawal kept). Once Redis was back b's start was stamped when it reached
    Redis, after the terminate: kept, and the terminated agent ran. It carries when it was
    asked now: withdrawn, whichever reaches Redis first."""
    mark = f"0.6027{os.getpid()}"  # sleeps under a second: the first run ends by itself
    async with a_holds_b_waits(tmp_path, fresh.url, mark, Recorder(), Recorder()) as (a, b):
        la, lb = a.leased, b.leased
        assert la is not None and lb is not None
        a.request_start(NAME)
        await _until("its first run ended", lambda: a.runs[NAME] == 1 and _ended(a), START_S)
        await _until("b has read Redis's clock", lambda: lb._clock is not None, 2 * RENEW_S)
        agent = a.runtime.agents.by_name(NAME)
        assert agent is not None
        fresh.stop()
        b.request_start(NAME)  # kept in b: Redis cannot be reached
        await anyio.sleep(0.5)
        a.runtime.terminate(agent, "operator: not wanted after all")  # kept in a
        assert NAME in lb._wanted
        fresh.start()
        await _until("b passed its start", lambda: NAME not in lb._wanted, 4 * RENEW_S)
        await _until("a withdrew", lambda: NAME not in la._unwake, 4 * RENEW_S)
        await anyio.sleep(2 * RENEW_S)  # a's renewals: a start left would be taken and run
        assert a.runs[NAME] == 1 and b.runs.get(NAME, 0) == 0
        assert not redis.Redis.from_url(fresh.url).exists(WAKE + NAME)


async def test_a_terminate_passed_while_a_first_start_waits_out_a_refusal_withdraws_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """An on-demand agent's first start, refused by a broken log (no agent record yet), waits
    for the retry; a terminate passed from another replica then was refused "not run here yet"
    and the start ran once the log mended. It withdraws it now. (The renewal's order step is
    called directly: renewals every 60 s here, so no let-go moves the lease meanwhile.)"""
    mark = f"0.6028{os.getpid()}"
    async with first_start_refused(tmp_path / "a", fresh.url, mark, monkeypatch) as (a, la, rec):
        order = Order(action="terminate", by="ops", reason="not wanted", via="replica-b", at=time.time())
        rec.broken = False  # (mended first: the terminate's own record; no await till the order)
        la._carry_out(NAME, order)  # as the next renewal takes it
        await _retried(a)
        assert a.runs.get(NAME, 0) == 0 and not marked(mark)


async def test_a_replica_renews_the_starts_of_the_agents_its_config_has(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start expires ``START_TTL_MS`` after the last renewal: each replica renews the starts
    of the agents its config has while it runs (its status watch), whether it holds them or
    not; another agent's start (removed here, perhaps another replica's) it leaves alone."""
    a = replica(tmp_path / "a", fresh.url, f"0.6032{os.getpid()}", Recorder(), start="on-demand")
    r = redis.Redis.from_url(fresh.url)
    r.set(LEASE + NAME, "forged", px=60_000)  # held elsewhere: a takes neither lease nor start
    for name in (NAME, "removed"):
        r.eval(leases._WAKE, 2, WAKE + name, "symbi:lease:withdrawn:" + name, "replica-b", "")
        r.pexpire(WAKE + name, 30_000)  # as if a day had nearly gone by
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a renewed its start", lambda: cast(int, r.pttl(WAKE + NAME)) > 60_000, 2 * RENEW_S)
        assert cast(int, r.pttl(WAKE + NAME)) <= START_TTL_MS
        assert 0 < cast(int, r.pttl(WAKE + "removed")) <= 30_000
        tg.cancel_scope.cancel()


async def test_orders_carried_out_before_the_first_watch_have_redis_s_clock(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """Redis's clock is the watch's to read (every RENEW_S); a watch that failed (a flaky
    Redis at start) left none, and a terminate carried out from the orders then marked "any
    start" (a start asked after it, elsewhere, was deleted too). The orders' own TIME seeds it."""
    rec = Recorder()
    a = replica(tmp_path / "a", fresh.url, f"6040.{os.getpid()}", rec, start="on-demand")
    la = a.leased
    assert la is not None

    async def no_watch(names: list[str], enabled: list[str]) -> Any:
        raise redis.ConnectionError("the watch's Redis is flaky")

    monkeypatch.setattr(la.board, "watch", no_watch)
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: la.holds(NAME), START_S)
        assert la._clock is None  # no watch went through
        now = float(cast(Any, r.time())[0])
        r.rpush(ORDERS + NAME, Order(action="terminate", by="ops", reason="x", via="b", at=now).dumps())
        terminated = lambda: "agent.terminate_requested" in [t for t, *_ in rec.events]  # noqa: E731
        await _until("the terminate carried out", terminated, 2 * RENEW_S)
        assert la._clock is not None and abs(la._clock[0] - time.time()) < 5
        tg.cancel_scope.cancel()


async def test_a_start_asked_while_a_terminates_delete_is_on_its_way_is_kept(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A terminate answered without the lease dropped what was asked here after its DEL came
    back: a `symbi agents run` answered 202 while the DEL was on its way was lost with it."""
    a = replica(tmp_path / "a", fresh.url, "6041", Recorder(), start="on-demand")
    leased = a.leased
    assert leased is not None
    unwake = leased.board.unwake

    async def asked_meanwhile(name: str, before: float | None = None) -> bool:
        leased.request_elsewhere(name)  # a run asked here while this DEL is on its way
        return await unwake(name, before)

    leased.board.unwake = asked_meanwhile  # type: ignore[method-assign]
    await leased.withdraw_start(NAME)
    assert NAME in leased._wanted  # the later start is kept, to pass on
    await leased.board.aclose()


async def test_a_terminate_before_redis_s_clock_was_read_spares_a_start_asked_after_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A terminate on the holder before Redis's clock was read (its watch failed) left a mark
    with no time (None): its DEL deleted the start, yet the mark was never dropped (told apart
    by that time), and the loop's next turn deleted "any start": one asked after it elsewhere."""
    a = replica(tmp_path / "a", fresh.url, "6042", Recorder(), start="on-demand")
    la = a.leased
    assert la is not None
    other = leases.LeaseBoard(fresh.url, owner="replica-b", timeout_s=2)
    r = redis.Redis.from_url(fresh.url)
    try:
        la.held.add(NAME)  # its holder, before any watch went through (no lease loop runs)
        assert la._clock is None
        await other.wake(NAME)  # a start asked before the terminate
        assert await la.withdraw_start(NAME)  # the terminate's DEL withdrew it
        await other.wake(NAME)  # a start asked after it, elsewhere
        await la._withdraw(NAME)  # the holder loop's next turn
        assert r.exists(WAKE + NAME) == 1  # still there, for the holder to take
    finally:
        la.held.discard(NAME)
        r.close()
        await other.aclose()
        await la.board.aclose()
