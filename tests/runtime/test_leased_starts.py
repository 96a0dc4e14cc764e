"""Starts of an on-demand hosted agent under shared state (``gateway.runtime.leased``), on a
real Redis with real bwrap runs: a start passed to the holder, taken, withdrawn by a terminate,
or passed on when the holder stops. (Split from tests/runtime/test_leased.py, near 500 lines.)
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import anyio
import pytest
import redis

from gateway.server.operations import pass_hosted_action
from gateway.state.leases import LEASE, RENEW_S, WAKE
from tests.runtime._leases import NAME, marked, replica
from tests.runtime.test_core import BreakingRecorder, Recorder
from tests.runtime.test_leased import START_S, _require_bwrap, _running, _seen, _until, fresh  # noqa: F401
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio


async def test_a_terminate_withdraws_a_start_no_holder_took_yet(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    """A start waits on Redis until a holder takes it (no expiry); an operator's terminate
    asked while no replica holds the lease was answered "runs nowhere", and the start still
    ran when a holder came. The terminate withdraws it."""
    mark = f"6015.{os.getpid()}"
    ra, rb = BreakingRecorder(), BreakingRecorder()
    a = replica(tmp_path / "a", fresh.url, mark, ra, start="on-demand")
    b = replica(tmp_path / "b", fresh.url, mark, rb, start="on-demand")
    assert a.leased is not None and b.leased is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: a.leased is not None and a.leased.holds(NAME), START_S)
        tg.start_soon(b.run)
        await _until("b sees a hold it", lambda: b.leased is not None and _seen(b.leased), 2 * RENEW_S)
        ra.broken = rb.broken = True
        b.request_start(NAME)  # passed to a, which takes it, cannot run it and passes it on
        await _until("a let it go", lambda: a.leased is not None and not a.leased.holds(NAME), 4 * RENEW_S)
        await _until("no holder", lambda: b.leased is not None and not _seen(b.leased), 2 * RENEW_S)
        ops = Recorder()  # the admin API's record of the terminate (its own log works)
        state = cast(Any, SimpleNamespace(gateway=SimpleNamespace(hosted=b, audit=None, events=ops)))
        status, body = await pass_hosted_action(state, NAME, "terminate", "ops", "not wanted")
        assert status == 200 and body["withdrawn"] is True  # held nowhere, but a start withdrawn
        assert [t for t, *_ in ops.events] == ["agent.terminate_requested"]
        rb.broken = False
        await _until(
            "b holds it", lambda: b.leased is not None and b.leased.holds(NAME), 2 * RENEW_S + START_S
        )
        await anyio.sleep(RENEW_S + START_S)  # a start taken would have run by now
        assert not marked(mark) and not _running(b)
        tg.cancel_scope.cancel()


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
        scope_a = anyio.CancelScope()

        async def run_a() -> None:
            with scope_a:
                await a.run()

        tg.start_soon(run_a)
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
        scope_a = anyio.CancelScope()

        async def run_a() -> None:
            with scope_a:
                await a.run()

        tg.start_soon(run_a)
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


async def test_a_start_left_for_a_disabled_or_removed_agent_is_deleted_at_start(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A start has no expiry: one left for an agent later disabled, or removed from the config,
    fired whenever it came back, weeks later. The lease runner deletes them when it starts."""
    mark = f"6020.{os.getpid()}"
    a = replica(tmp_path / "a", fresh.url, mark, Recorder(), start="on-demand")
    a.config.agents[NAME] = a.config.agents[NAME].model_copy(update={"enabled": False})
    r = redis.Redis.from_url(fresh.url)
    r.set(WAKE + NAME, "another replica")  # disabled here
    r.set(WAKE + "removed", "another replica")  # in no config any more
    r.set("symbi:other", "kept")
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        gone = lambda: not r.exists(WAKE + NAME) and not r.exists(WAKE + "removed")  # noqa: E731
        await _until("both deleted", gone, 2 * RENEW_S)
        assert r.get("symbi:other") == b"kept"
        tg.cancel_scope.cancel()
