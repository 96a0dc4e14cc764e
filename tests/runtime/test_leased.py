"""Hosted agents under shared state (``gateway.runtime.leased``), on a real Redis with real
bwrap runs: gateways that share ``[state] redis_url`` and one ``[agents.sleeper]`` run it once
between them, not once each (every replica and ``symbi serve --workers N`` worker ran every
hosted agent: N copies under one identity, with N budgets). The holder's stop, death, or loss
of Redis hands the agent over within the lease's bounds, never to two at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import redis
from anyio import wait_all_tasks_blocked

from gateway.runtime import leased
from gateway.runtime.hosted import AUDIT_RETRY_S, HostedAgents
from gateway.state.leases import LEASE, LEASE_TTL_MS, RENEW_S, STOP_MARGIN_S
from tests.conftest import ROOT
from tests.runtime._leases import (
    NAME,
    START_S,
    _running,
    _seen,
    _until,
    a_holds_b_waits,
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
TTL_S = LEASE_TTL_MS / 1000


def _lost(rec: Recorder) -> list[dict[str, Any]]:
    return [d for t, d, _, _ in rec.events if t == "agent.lease_lost"]


@contextlib.asynccontextmanager
async def one_of_two_runs_it(
    tmp_path: Path, url: str, mark: str
) -> AsyncIterator[tuple[HostedAgents, Recorder, HostedAgents, Recorder]]:
    """Two gateways on one Redis with the hosted agent ``sleep MARK``, once one of them runs it:
    (a, its events, b, its events). Both are stopped when the block ends."""
    ra, rb = Recorder(), Recorder()
    a, b = replica(tmp_path / "a", url, mark, ra), replica(tmp_path / "b", url, mark, rb)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        tg.start_soon(b.run)
        await _until(
            "one of them runs it", lambda: bool(marked(mark)) and (_running(a) or _running(b)), START_S
        )
        yield a, ra, b, rb
        tg.cancel_scope.cancel()


async def test_two_gateways_on_one_redis_run_a_hosted_agent_once(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    mark = f"6001.{os.getpid()}"
    async with one_of_two_runs_it(tmp_path, fresh.url, mark) as (a, ra, b, rb):
        await anyio.sleep(2 * RENEW_S + 1)  # renewals and the other's tries to take it go by
        assert [_running(a), _running(b)].count(True) == 1
        assert len(marked(mark)) == 1  # one real process between the two gateways
        holder, other = (a, b) if _running(a) else (b, a)
        assert other.runtime.agents.by_name(NAME) is None  # never started there
        assert holder.leased is not None
        owner = holder.leased.board.owner
        for h in (a, b):  # whichever answers /api/status names the holder
            leased = h.leased
            assert leased is not None
            await _until("its view read", functools.partial(_seen, leased), 2 * RENEW_S)
            seen = leased.seen[NAME]
            assert seen is not None and seen["holder"] == owner and seen["state"] == "Running"
    assert marked(mark) == set()
    taken = [t for t, *_ in ra.events + rb.events if t == "agent.lease_acquired"]
    assert len(taken) == 1


async def _a_runs_then_its_log_breaks(
    tg: anyio.abc.TaskGroup, tmp_path: Path, url: str, mark: str
) -> tuple[HostedAgents, HostedAgents]:
    """Replica a runs the agent, b stands by (its log works), then a's log breaks."""
    rec = BreakingRecorder()
    a, b = replica(tmp_path / "a", url, mark, rec), replica(tmp_path / "b", url, mark, Recorder())
    tg.start_soon(a.run)
    await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
    tg.start_soon(b.run)
    rec.broken = True
    return a, b


async def _b_keeps_it(a: HostedAgents, b: HostedAgents, mark: str) -> None:
    """b took the agent over; a, its log still broken, does not take it back."""
    assert a.leased is not None and not a.leased.holds(NAME) and not _running(a)
    await anyio.sleep(RENEW_S + 1)  # a's tries to take it back go by: its log is still broken
    assert _running(b) and len(marked(mark)) == 1 and not _running(a)


async def test_a_stopped_holder_hands_the_agent_over(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    mark = f"6002.{os.getpid()}"
    a, b = (
        replica(tmp_path / "a", fresh.url, mark, Recorder()),
        replica(tmp_path / "b", fresh.url, mark, Recorder()),
    )
    async with anyio.create_task_group() as tg:
        scope_a, scope_b = stoppable(tg, a), stoppable(tg, b)
        await _until(
            "one of them runs it", lambda: bool(marked(mark)) and (_running(a) or _running(b)), START_S
        )
        await anyio.sleep(RENEW_S + 1)  # the other's try to take it goes by
        assert len(marked(mark)) == 1 and [_running(a), _running(b)].count(True) == 1
        holder, other = (a, b) if _running(a) else (b, a)
        (scope_a if holder is a else scope_b).cancel()  # the holder stops (SIGTERM): it releases
        await _until(  # within a renewal and a start, or it fails
            "the other runs it", lambda: len(marked(mark)) == 1 and _running(other), RENEW_S + START_S
        )
        assert not _running(holder)
        tg.cancel_scope.cancel()


async def test_a_killed_holder_hands_the_agent_over_once_its_lease_expires(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A holder killed with SIGKILL releases nothing: its lease expires, and another gateway
    takes the agent within the lease's time to live and one try interval."""
    mark = f"6003.{os.getpid()}"
    proc = await anyio.open_process(
        [sys.executable, "-m", "tests.runtime._leases", str(tmp_path / "a"), fresh.url, mark],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await _until("the other process runs it", lambda: len(marked(mark)) == 1, 60)
        b = replica(tmp_path / "b", fresh.url, mark, Recorder())
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.run)
            await anyio.sleep(RENEW_S + 1)
            assert not _running(b) and len(marked(mark)) == 1  # held elsewhere: not started here
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await _until("its run died with it (bwrap --die-with-parent)", lambda: not marked(mark), 10)
            await _until("this one runs it", lambda: marked(mark) != set(), TTL_S + RENEW_S + START_S)
            assert time.monotonic() - killed < TTL_S + RENEW_S + START_S
            assert _running(b) and len(marked(mark)) == 1
            tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_a_holder_cut_off_from_redis_stops_its_agent_before_the_lease_could_expire(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    mark = f"6004.{os.getpid()}"
    async with one_of_two_runs_it(tmp_path, fresh.url, mark) as (a, ra, b, rb):
        await anyio.sleep(RENEW_S + 1)  # the other's try to take it goes by
        assert len(marked(mark)) == 1 and [_running(a), _running(b)].count(True) == 1
        holder, rec = (a, ra) if _running(a) else (b, rb)
        fresh.stop()
        down = time.monotonic()
        # its last renewal went out at most RENEW_S before: its lease lives until TTL_S after
        # that at the earliest, so the run must be gone within TTL_S - RENEW_S of the cut
        await _until("the holder stopped its run", lambda: not marked(mark), TTL_S - RENEW_S)  # or fails
        await _until("its record and audit say so", lambda: bool(_lost(rec)) and not _running(holder), 2)
        lost = _lost(rec)
        assert len(lost) == 1 and lost[0]["stopped_before_expiry_s"] > 0
        await anyio.sleep(max(0.0, TTL_S - (time.monotonic() - down)))
        assert not marked(mark)  # nobody runs it without Redis
        fresh.start()  # back (empty): one of them takes it again, one only
        await _until("one runs it again", lambda: len(marked(mark)) == 1, RENEW_S + START_S)
        await anyio.sleep(RENEW_S + 1)
        assert len(marked(mark)) == 1
    assert STOP_MARGIN_S < TTL_S - RENEW_S


async def test_an_overwritten_lease_stops_the_holders_run(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    """Someone writes the lease key over the holder's token (a forger with Redis access): the
    holder's next compare-and-extend fails, so it stops its run rather than keep a lease it
    no longer holds, and records it."""
    mark = f"6005.{os.getpid()}"
    rec = Recorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("it runs", lambda: bool(marked(mark)) and _running(a), START_S)
        redis.Redis.from_url(fresh.url).set(LEASE + NAME, "forged", px=60_000)
        await _until("its run stopped", lambda: not marked(mark), RENEW_S + 5)
        await _until("its record and audit say so", lambda: bool(_lost(rec)) and not _running(a), 2)
        assert _lost(rec)[0]["stopped_before_expiry_s"] is None  # it was no longer its lease
        await anyio.sleep(RENEW_S + 1)
        assert not marked(mark)  # the forged lease is not taken over either: it waits for it to end
        tg.cancel_scope.cancel()


async def test_a_broken_audit_log_does_not_end_the_lease_runner(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    """The holder's run is stopped (its lease overwritten) while the audit log is broken: the
    record of the loss raised ``AuditError`` out of the lease loop and ended the gateway
    (rt42b's "Still left"). Now the run stops and the lease is released as before, and the
    loop lives on: once the log records again, it takes the agent back."""
    mark = f"6006.{os.getpid()}"
    rec = BreakingRecorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("it runs", lambda: bool(marked(mark)) and _running(a), START_S)
        rec.broken = True
        redis.Redis.from_url(fresh.url).set(LEASE + NAME, "forged", px=int(2 * RENEW_S * 1000))
        leased = a.leased
        assert leased is not None
        # its process gone and the lease let go: the records of both were refused (AuditError
        # out of run() before, ending this task group)
        await _until("its run stopped", lambda: not marked(mark) and not leased.holds(NAME), RENEW_S + 5)
        await wait_all_tasks_blocked()  # the refused records handled (its release may wait on Redis)
        assert not _running(a)
        rec.broken = False
        await _until("it runs it again", lambda: bool(marked(mark)) and _running(a), 4 * RENEW_S + START_S)
        tg.cancel_scope.cancel()


async def test_an_order_passed_while_the_audit_log_is_broken_is_carried_out_and_the_lease_kept(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """An operator's terminate passed to the holder while the log is broken: its record raised
    ``AuditError`` out of the renewal loop, the run stopped and the lease was let go, and
    another replica (or this one) started the agent afresh: the terminate undone. Now the
    order is carried out, the agent stays ended, and the holder keeps its lease."""
    mark = f"6007.{os.getpid()}"
    rec = BreakingRecorder()
    a, b = replica(tmp_path / "a", fresh.url, mark, rec), replica(tmp_path / "b", fresh.url, mark, Recorder())
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        tg.start_soon(b.run)
        assert a.leased is not None and b.leased is not None
        owner = redis.Redis.from_url(fresh.url).get(LEASE + NAME)
        rec.broken = True
        assert await b.leased.pass_order(NAME, "terminate", "ops", "done") is not None
        await _until("its process ended", lambda: not marked(mark), RENEW_S + 5)
        ended = time.monotonic()
        while time.monotonic() - ended < 2 * RENEW_S + 1:  # renewals, b's tries to take it
            assert redis.Redis.from_url(fresh.url).get(LEASE + NAME) == owner and a.leased.holds(NAME)
            assert not marked(mark) and not _running(b)
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()


async def test_a_holder_whose_audit_log_is_broken_lets_the_agent_go_to_a_replica_that_can_run_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """The holder's log breaks and its run ends: every next run is refused there (the audit log
    cannot record it), yet it kept renewing the lease, so the replica whose log works never
    took it: the agent ran nowhere. Now the holder lets the lease go, does not take it back
    while its log is broken, and the other replica runs the agent."""
    mark = f"6008.{os.getpid()}"
    async with anyio.create_task_group() as tg:
        a, b = await _a_runs_then_its_log_breaks(tg, tmp_path, fresh.url, mark)
        for pid in marked(mark):  # its run ends (a crash): the restart policy runs it again
            os.kill(pid, signal.SIGKILL)
        await _until("b runs it", lambda: len(marked(mark)) == 1 and _running(b), 3 * RENEW_S + START_S)
        await _b_keeps_it(a, b, mark)
        tg.cancel_scope.cancel()


async def test_a_start_taken_by_a_holder_whose_audit_log_is_broken_is_passed_to_the_next(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """An on-demand agent's start passed to the holder after its log broke: the holder took it
    off Redis, its run was refused, and it let the lease go; the replica that took the lease
    then waited for a start that never came (the operator's 202 lost). Now the start goes on
    to the next holder, which runs the agent."""
    mark = f"6009.{os.getpid()}"
    rec = BreakingRecorder()
    async with a_holds_b_waits(tmp_path, fresh.url, mark, rec, Recorder()) as (a, b):
        assert not marked(mark)  # on-demand: nobody runs it yet
        rec.broken = True
        b.request_start(NAME)  # passed to a (it holds the lease)
        await _until("b runs it", lambda: bool(marked(mark)) and _running(b), 4 * RENEW_S + START_S)
        assert a.leased is not None and not a.leased.holds(NAME)
        assert not _running(a) and len(marked(mark)) == 1


async def test_a_replica_whose_audit_log_is_broken_does_not_take_a_free_lease(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """Its log broken from the start: the lease is never taken (no ``agent.lease_acquired``
    tried, the lease key stays empty over several tries); once the log records, it is."""
    mark = f"6010.{os.getpid()}"
    rec = BreakingRecorder()
    rec.broken = True
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        until = time.monotonic() + 2 * RENEW_S + 1
        while time.monotonic() < until:
            assert r.get(LEASE + NAME) is None
            await anyio.sleep(0.02)
        assert "agent.lease_acquired" not in rec.refused and not marked(mark)
        rec.broken = False
        await _until("it runs", lambda: bool(marked(mark)) and _running(a), 2 * RENEW_S + START_S)
        tg.cancel_scope.cancel()


async def test_a_refused_record_of_the_lease_taken_does_not_end_the_lease_runner(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """The log refuses only ``agent.lease_acquired`` (``recordable`` passes): the lease is let
    go and taken again later (``except* AuditError`` in the lease loop); the loop does not end
    (out of ``run`` it ended the gateway), and once recorded the agent runs."""
    mark = f"6011.{os.getpid()}"
    rec = BreakingRecorder(refuse={"agent.lease_acquired"})
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until(
            "taken and refused twice", lambda: rec.refused.count("agent.lease_acquired") >= 2, 3 * RENEW_S
        )
        assert not marked(mark) and not _running(a)
        rec.refuse.clear()
        await _until("it runs", lambda: bool(marked(mark)) and _running(a), 2 * RENEW_S + START_S)
        tg.cancel_scope.cancel()


async def test_a_start_passed_on_outlives_the_lease_while_no_replica_can_take_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """The holder of an idle on-demand agent takes a start, its log broken: it lets the lease
    go and leaves the start for the next holder. No replica could take the lease for longer
    than a lease lives (both logs broken): the start lived as long (``LEASE_TTL_MS``) and was
    lost, after the operator's 202. Now it waits on Redis until a holder takes it."""
    mark = f"6012.{os.getpid()}"
    ra, rb = BreakingRecorder(), BreakingRecorder()
    r = redis.Redis.from_url(fresh.url)
    async with a_holds_b_waits(tmp_path, fresh.url, mark, ra, rb) as (a, b):
        ra.broken = rb.broken = True
        b.request_start(NAME)  # passed to a, which takes it and cannot run it
        await _until("a let it go", lambda: a.leased is not None and not a.leased.holds(NAME), 4 * RENEW_S)
        await anyio.sleep(TTL_S + RENEW_S)  # nobody can take the lease for longer than it lives
        assert r.get(LEASE + NAME) is None and not marked(mark)
        rb.broken = False
        await _until("b runs it", lambda: bool(marked(mark)) and _running(b), 2 * RENEW_S + START_S)
        assert not _running(a) and len(marked(mark)) == 1


async def test_a_live_run_whose_holders_audit_log_stays_broken_moves_to_a_replica_that_can_run_it(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """The holder's log breaks while its run is live: the run kept its lease, every call it
    made refused there (the audit step), until it ended by itself, while a replica whose log
    works stood by. Now, the log still broken after ``AUDIT_RETRY_S``, the holder stops the run
    and lets the lease go (as at a lost lease), and does not take it back while broken."""
    mark = f"6013.{os.getpid()}"
    async with anyio.create_task_group() as tg:
        a, b = await _a_runs_then_its_log_breaks(tg, tmp_path, fresh.url, mark)
        broke = time.monotonic()
        await _until("b runs it", lambda: len(marked(mark)) == 1 and _running(b), 4 * RENEW_S + START_S)
        assert time.monotonic() - broke >= AUDIT_RETRY_S  # not at the first refusal: no flapping
        await _b_keeps_it(a, b, mark)
        tg.cancel_scope.cancel()


async def test_a_live_run_keeps_its_lease_through_a_short_audit_log_outage(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    """A log broken for less than ``AUDIT_RETRY_S`` (seen at most once by the renewals) does
    not move a live run: it is not stopped for an outage that is already over. The wait is
    raised to 30 s here, so a sleep overrun on a loaded machine cannot make the outage long
    enough; a let-go at the first renewal that sees the log broken still fails the test."""
    monkeypatch.setattr(leased, "AUDIT_RETRY_S", 30.0)
    mark = f"6014.{os.getpid()}"
    rec = BreakingRecorder()
    a, b = replica(tmp_path / "a", fresh.url, mark, rec), replica(tmp_path / "b", fresh.url, mark, Recorder())
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        tg.start_soon(b.run)
        pids = marked(mark)
        rec.broken = True
        await anyio.sleep(RENEW_S + 0.5)  # one renewal (at most two) sees it broken
        rec.broken = False
        until = time.monotonic() + 5 + 2 * RENEW_S  # past when the 5 s wait would let it go
        while time.monotonic() < until:
            assert marked(mark) == pids and _running(a) and not _running(b)
            await anyio.sleep(0.1)
        tg.cancel_scope.cancel()


class MendingRecorder(BreakingRecorder):
    """A log that mends just as its broken holder lets the run go (its record of the loss)."""

    mended_at = 0.0

    def emit(self, event_type: str, details: Any, **kw: Any) -> None:
        if event_type == "agent.lease_lost" and self.broken:
            self.broken, self.mended_at = False, time.monotonic()
        super().emit(event_type, details, **kw)


async def test_a_holder_that_let_its_agent_go_does_not_retake_it_at_once(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
) -> None:
    """A holder lets a live run go when its log stays broken (``_letting_go``), and tried to take
    the lease again at once, before any other replica (they try every ``RENEW_S``): a log that
    had just recovered had its run killed and started again on the same replica. Now it waits
    ``RENEW_S`` first."""
    mark = f"6019.{os.getpid()}"
    rec = MendingRecorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    assert a.leased is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a runs it", lambda: bool(marked(mark)) and _running(a), START_S)
        rec.broken = True  # mended as a lets the run go
        taken = lambda: [t for t, *_ in rec.events].count("agent.lease_acquired") == 2  # noqa: E731
        await _until("a takes it again", taken, 4 * RENEW_S + 2 * START_S)
        assert time.monotonic() - rec.mended_at >= RENEW_S - 0.2  # (0.2: the release's round trip)
        tg.cancel_scope.cancel()
