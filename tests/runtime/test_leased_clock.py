"""A hosted agent's terminate on the holder and Redis's clock (``gateway.runtime.leased``), on a
real Redis: a withdrawal cut short keeps its mark, a mark is put on a clock read before it is
used, and a slow reading (a reconnect's) does not replace the last one. (Split from
tests/runtime/test_leased_starts.py, near 500 lines.) Redis is slowed for real: ``CLIENT
PAUSE``, which holds every client's commands (``WRITE``: its writes and scripts) a while."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis

from gateway.runtime import leased
from gateway.runtime.leased import LeasedAgents
from gateway.runtime.marks import Mark
from gateway.state import leases
from gateway.state.leases import WAKE
from tests.runtime._leases import NAME, replica
from tests.runtime.test_core import Recorder
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

# isort: split
from tests.runtime._leases import _require_bwrap, fresh  # noqa: F401 - the fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
async def holder(tmp_path: Path, fresh: Redis) -> AsyncIterator[tuple[LeasedAgents, redis.Redis]]:  # noqa: F811
    """An on-demand agent's lease runner (no loop runs: each test drives its steps) and a plain
    client on its Redis (left unpaused)."""
    la = replica(tmp_path / "a", fresh.url, "6043", Recorder(), start="on-demand").leased
    assert la is not None
    r = redis.Redis.from_url(fresh.url)
    try:
        yield la, r
    finally:
        r.client_unpause()
        r.close()
        await la.board.aclose()


async def test_a_withdrawal_cut_short_in_its_delete_keeps_its_mark(
    holder: tuple[LeasedAgents, redis.Redis],
) -> None:
    """The holder loop's withdrawal runs under the renewal's bound; a DEL waiting on Redis (a
    retry's backoff in an outage) was cancelled by it, and the mark, taken out before the DEL,
    was put back only on a Redis error: the terminate's withdrawal was lost, and a start asked
    before it ran at the next holder."""
    la, r = holder
    la._clock = (await la.board.now(), time.monotonic())
    mark = la._unwake[NAME] = Mark()
    r.client_pause(3000, all=False)  # the DEL (a script) waits
    with anyio.move_on_after(0.5):
        await la._withdraw(NAME)
    assert la._unwake.get(NAME) is mark  # kept for the next turn


async def test_a_mark_kept_before_any_reading_is_put_on_a_clock_read_for_it(
    holder: tuple[LeasedAgents, redis.Redis],
    fresh: Redis,  # noqa: F811
) -> None:
    """A terminate on the holder before Redis's clock was read, whose DEL found nothing, keeps
    its mark; the loop's next turn withdrew with no time ("any start") and deleted a start asked
    after the terminate, elsewhere. The clock is read for it first now."""
    la, r = holder
    other = leases.LeaseBoard(fresh.url, owner="replica-b", timeout_s=2)
    try:
        la.held.add(NAME)  # its holder, before any watch went through (no lease loop runs)
        assert la._clock is None
        assert not await la.withdraw_start(NAME)  # nothing to delete: the mark is kept
        assert NAME in la._unwake
        la._unwake[NAME].mono -= 5  # made well before the start below (no race with the estimate)
        await other.wake(NAME)  # a start asked after the terminate, elsewhere
        await la._withdraw(NAME)  # the holder loop's next turn
        assert r.exists(WAKE + NAME) == 1  # still there, for the holder to take
    finally:
        await other.aclose()


async def test_a_start_kept_before_any_reading_is_put_on_a_clock_read_for_it(
    holder: tuple[LeasedAgents, redis.Redis],
    fresh: Redis,  # noqa: F811
) -> None:
    """A start asked on a replica that never read Redis's clock (it came up in an outage) was
    passed on with no time, stamped "now" by Redis: a terminate asked after it, kept by the
    holder through the outage, did not withdraw it, and the terminated agent ran."""
    la, r = holder
    other = leases.LeaseBoard(fresh.url, owner="replica-b", timeout_s=2)
    try:
        assert la._clock is None
        la._wanted[NAME] = Mark(mono=time.monotonic() - 5)  # asked 5 s ago
        await other.unwake(NAME)  # the holder's terminate, after it (its withdrawal now)
        await la._pass_requests(NAME)
        assert r.exists(WAKE + NAME) == 0  # refused: withdrawn by the later terminate
    finally:
        await other.aclose()


async def test_a_slow_reading_of_redis_s_clock_does_not_replace_the_last(
    holder: tuple[LeasedAgents, redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch's reading is put at the time its round trip began; one that waited (Redis
    paused here; a reconnect after an outage in production) errs ahead by the wait, and marks
    kept through the outage, put on it, made a start asked before a terminate later than it.
    A fast reading replaces the last; a slow one does not."""
    la, r = holder

    async def one_watch() -> None:
        before = la.seen_at
        async with anyio.create_task_group() as tg:
            tg.start_soon(la._watch)
            with anyio.fail_after(30):
                while la.seen_at == before:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    stale = (0.0, 0.0)
    la._clock = stale
    monkeypatch.setattr(leased, "CLOCK_RTT_S", 60.0)  # (any real round trip is fast)
    await one_watch()
    assert la._clock is not stale and la._clock[0] > 0  # a fast reading is taken
    la._clock = stale
    monkeypatch.setattr(leased, "CLOCK_RTT_S", 0.2)
    r.client_pause(1000, all=True)  # the watch's round trip waits 1 s, over the bound
    await one_watch()
    assert la._clock is stale
