"""A hosted agent's terminate marks against the starts its holder's renewal takes
(``gateway.runtime.leased``, ``gateway.runtime.marks``), and the lease runner's log of a
refused part of its watch. Real Redis, real bwrap runs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis

from gateway.runtime import leased
from gateway.runtime.orders import Order
from gateway.state import leases
from gateway.state.leases import ORDERS, WAKE, WITHDRAWN
from tests.runtime._leases import NAME, START_S, _until, marked, replica
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("after", [False, True])
async def test_a_start_asked_after_a_terminate_order_taken_in_one_renewal_runs(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811
    after: bool,
) -> None:
    """A terminate order and a start left for an idle on-demand holder before one renewal: the
    renewal that took the start carried out the terminate (its mark kept) and dropped the start
    whenever it was asked, one asked after the terminate too (a 202 for nothing). Only a start
    asked by the order's time is dropped now; a later one runs."""
    mark = f"6049.{int(after)}{os.getpid()}"
    rec = Recorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec, start="on-demand")
    r = redis.Redis.from_url(fresh.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("a holds it", lambda: a.leased is not None and a.leased.holds(NAME), START_S)
        sec, usec = cast(tuple[int, int], r.time())
        at = sec + usec / 1e6 - 2.0  # the terminate, asked 2 s ago
        order = Order(action="terminate", by="ops", reason="not wanted", via="replica-b", at=at)
        asked = "" if after else repr(at - 1.0)  # now (after it), or 1 s before it
        with r.pipeline(transaction=True) as pipe:  # both in one renewal window, for sure
            pipe.eval(leases._WAKE, 2, WAKE + NAME, WITHDRAWN + NAME, "replica-b", asked)
            pipe.rpush(ORDERS + NAME, order.dumps())
            pipe.execute()
        terminated = lambda: "agent.terminate_requested" in [t for t, *_ in rec.events]  # noqa: E731
        await _until("the terminate carried out", terminated, 2 * leases.RENEW_S)
        assert not r.exists(WAKE + NAME) and not r.exists(ORDERS + NAME)  # both taken
        if after:
            await _until("the later start runs", lambda: a.runs.get(NAME, 0) == 1, START_S)
        else:
            await anyio.sleep(leases.RENEW_S)  # a start handed on would have made its run's record
            assert a.runtime.agents.by_name(NAME) is None and not marked(mark)
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
            admin.acl_setuser("nopexpire", commands=["+pexpire"])
            n = len(looks)
            await _until("ten more looks", lambda: len(looks) >= n + 10, 10)
            assert not looks[-1].failed
            assert len(lines(logging.WARNING)) == 1 and len(lines(logging.INFO)) == 1
            tg.cancel_scope.cancel()
    finally:
        admin.acl_deluser("nopexpire")
        admin.close()
        await la.board.aclose()
