"""A hosted agent's terminate marks against the starts its holder's renewal takes
(``gateway.runtime.leased``, ``gateway.runtime.marks``), and the lease runner's log of a
refused part of its watch. Real Redis, real bwrap runs."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from gateway.runtime import leased, marks
from gateway.runtime.marks import Mark
from gateway.runtime.orders import Order
from gateway.runtime.orders import act as real_act
from gateway.state import leases
from gateway.state.leases import ORDERS, WAKE, WITHDRAWN
from tests.runtime._leases import NAME, START_S, _until, marked, nothing_ran, redis_now, replica
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("asked", ["unstamped", "before", "after"])
async def test_a_terminate_order_and_a_start_in_one_renewal_run_the_start_only_if_asked_after(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
    asked: str,
) -> None:
    """A terminate order and a start left for an idle on-demand holder before one renewal. The
    renewal handed the start to the supervisor before the orders were read, so the terminate
    found the new run Initializing and was refused, and the terminated agent ran; then, the
    orders first, it dropped the start whenever it was asked, one asked after the terminate too
    (a 202 for nothing). Only a start asked by the order's time is dropped now (one with no
    stamp, from a replica before stamps, counts as asked before); a later one runs."""
    after = asked == "after"
    mark = f"6049.{len(asked)}{os.getpid()}"
    rec = Recorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec, start="on-demand")
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: a.leased is not None and a.leased.holds(NAME), START_S)
        at = redis_now(r) - 2.0  # the terminate, asked 2 s ago
        order = Order(action="terminate", by="ops", reason="not wanted", via="replica-b", at=at)
        with r.pipeline(transaction=True) as pipe:  # both in one renewal window, for sure
            if asked == "unstamped":
                pipe.set(WAKE + NAME, "replica-b")
            else:  # now (after it), or 1 s before it
                stamp = "" if after else repr(at - 1.0)
                pipe.eval(leases._WAKE, 2, WAKE + NAME, WITHDRAWN + NAME, "replica-b", stamp)
            pipe.rpush(ORDERS + NAME, order.dumps())
            pipe.execute()
        terminated = lambda: "agent.terminate_requested" in [t for t, *_ in rec.events]  # noqa: E731
        await _until("the terminate carried out", terminated, 2 * leases.RENEW_S)
        assert not r.exists(WAKE + NAME) and not r.exists(ORDERS + NAME)  # both taken
        if after:
            await _until("the later start runs", lambda: a.runs.get(NAME, 0) == 1, START_S)
        else:
            await nothing_ran(a, mark)  # (the start dropped in the step that carried out the order)
            assert a.runtime.agents.by_name(NAME) is None
        tg.cancel_scope.cancel()


async def test_a_refused_part_of_the_watch_is_logged_when_it_starts_and_when_it_ends(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis user whose ACL refuses ``PEXPIRE`` had the lease runner warn at every look
    (every ``RENEW_S``, for as long as the ACL stood). One line when the refusal starts, one
    when it ends."""
    admin = redis.Redis.from_url(fresh.url)
    admin.acl_setuser(
        "nopexpire", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-pexpire"]
    )
    url = f"redis://nopexpire:pw@127.0.0.1:{fresh.port}/0"
    la = replica(tmp_path / "a", url, "6049", Recorder(), start="on-demand").leased
    assert la is not None
    monkeypatch.setattr(leased, "RENEW_S", 0.05)
    looks: list[Any] = []
    watch = la.board.watch

    async def counted(names: list[str], enabled: list[str]) -> Any:
        looks.append(got := await watch(names, enabled))
        return got

    monkeypatch.setattr(la.board, "watch", counted)

    def lines(level: int) -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.name == "symbi.runtime.leased" and r.levelno == level
        ]

    caplog.set_level(logging.INFO, logger="symbi.runtime.leased")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(la._watch)
            await _until("ten refused looks", lambda: sum(1 for x in looks if x.failed) >= 10, 10)
            assert len(lines(logging.WARNING)) == 1
            admin.acl_setuser("nopexpire", enabled=True, commands=["+pexpire"])  # (enabled: False by default)
            n = len(looks)
            await _until("ten more looks", lambda: len(looks) >= n + 10, 10)
            assert not looks[-1].failed
            assert len(lines(logging.WARNING)) == 1 and len(lines(logging.INFO)) == 1
            tg.cancel_scope.cancel()
    finally:
        admin.acl_deluser("nopexpire")
        admin.close()
        await la.board.aclose()


async def test_a_terminate_made_on_another_thread_while_a_suspend_is_carried_out_keeps_its_time(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Carrying out any order put a terminate's mark made meanwhile (on another thread: a
    terminate answered there) at the order's time: a suspend asked 2 s ago made that terminate
    2 s older, and a start asked in between survived it. Only a terminate order's own mark is
    dated. The other thread is real; it is started from inside the order's action, the one
    instant no timing can hit (a seam, wrapping the real ``act``)."""
    mark = f"6049.7{os.getpid()}"
    a = replica(tmp_path / "a", fresh.url, mark, Recorder())
    la = a.leased
    assert la is not None
    made: list[tuple[float, Mark]] = []

    def act_meanwhile(*args: Any, **kwargs: Any) -> tuple[bool, str]:
        def terminate() -> None:
            before = time.monotonic()
            la.withdraw(NAME)
            made.append((before, la._unwake[NAME]))

        other = threading.Thread(target=terminate)
        other.start()
        other.join(10)
        return real_act(*args, **kwargs)

    monkeypatch.setattr(leased, "act", act_meanwhile)
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("it runs", lambda: a.runs.get(NAME, 0) == 1, START_S)
        order = Order(action="suspend", by="ops", reason="look", via="replica-b", at=redis_now(r) - 2.0)
        r.rpush(ORDERS + NAME, order.dumps())
        await _until(
            "the suspend carried out", lambda: bool(made) and not r.exists(ORDERS + NAME), 3 * leases.RENEW_S
        )
        before, kept = made[0]
        clock = la._clock
        assert clock is not None  # (read by the renewal's orders)
        made_at = marks.on_clock(clock, Mark(mono=before))
        assert marks.on_clock(clock, kept) >= made_at  # not put at the suspend's, 2 s before
        tg.cancel_scope.cancel()
    r.close()


async def test_an_error_carrying_out_an_order_is_not_retried_as_a_failed_renewal(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ``OSError`` raised while an order is carried out (a hook whose kill is refused) was
    caught as a failed renewal once the orders moved inside the renewal's ``try``: logged
    "retrying", the order lost after its 202, the lease kept. It ends the lease's run as any bug
    does (the run stopped, the lease released). The action's error is a seam: no real order
    raises one on purpose."""
    mark = f"6049.8{os.getpid()}"
    a = replica(tmp_path / "a", fresh.url, mark, Recorder())

    def refused(*args: Any, **kwargs: Any) -> tuple[bool, str]:
        raise PermissionError("the hook's kill was refused")

    monkeypatch.setattr(leased, "act", refused)
    r = redis.Redis.from_url(fresh.url)
    with pytest.raises(BaseExceptionGroup) as caught:
        with anyio.fail_after(START_S + 4 * leases.RENEW_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run)
                await _until("it runs", lambda: a.runs.get(NAME, 0) == 1, START_S)
                order = Order(action="suspend", by="ops", reason="look", via="replica-b", at=redis_now(r))
                r.rpush(ORDERS + NAME, order.dumps())
                await anyio.sleep_forever()
    assert caught.value.subgroup(PermissionError) is not None
    await _until("its run stopped", lambda: not marked(mark), 10)
    r.close()
