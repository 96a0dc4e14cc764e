"""A hosted agent's run key presented to a replica that does not run the agent
(``gateway.runtime.runkeys``), on a real Redis: the holder's status is read at most once per
``CACHE_S``, and a run that stops being Running still has its key refused within that bound.

Before: every request with such a key read the lease board (an ``MGET``): 200 requests, 200
reads. Counted by Redis itself (``INFO commandstats``), or by a spy around the real board's
read; the bound is asserted on a clock the test moves, not timed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis

from gateway.config.model import Config
from gateway.config.sections import AgentConfig
from gateway.context import Principal
from gateway.errors import AuthFailed, StateUnavailable
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.runkeys import CACHE_S, RunCredentials
from gateway.state.leases import STATUS, LeaseBoard
from tests.conftest import RecordingSink
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
KEY = Principal(id="agent:clock", kind="agent", source="key", claims={"key_id": "kid-1"})


@pytest.fixture
async def replica(
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> AsyncIterator[tuple[RunCredentials, HostedAgents, redis.Redis]]:
    """A replica's run-key check and hosted agents (not running ``clock``: another holds it)."""
    raw = redis.Redis.from_url(redis_engine.url)
    raw.flushall()
    config = Config(agents={"clock": AgentConfig(command="/bin/true")})
    board = LeaseBoard(redis_engine.url, owner="replica-b", timeout_s=2)
    hosted = HostedAgents(config, AgentRuntime(config, RecordingSink()), RecordingSink(), sandbox=None,
                          host=None, board=board)  # fmt: skip
    try:
        yield RunCredentials(config), hosted, raw
    finally:
        await board.aclose()


def holder_says(raw: redis.Redis, state: str) -> None:
    """What the process holding ``clock``'s lease writes at each renewal and state change."""
    raw.set(STATUS + "clock", json.dumps({"holder": "replica-a", "state": state, "key": "kid-1"}), px=10_000)


def reads(raw: redis.Redis) -> int:
    stats: dict[str, Any] = raw.info("commandstats")  # type: ignore[assignment]
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def admitted(runs: RunCredentials, hosted: HostedAgents) -> bool:
    try:
        await runs.admit(KEY, hosted)
    except AuthFailed:
        return False
    return True


async def test_a_flood_of_requests_reads_the_board_once_per_interval(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
) -> None:
    _, hosted, raw = replica
    clock = Clock()
    runs = RunCredentials(hosted.config, clock=clock)
    holder_says(raw, "Running")
    before = reads(raw)
    got: list[bool] = []

    async def one() -> None:
        got.append(await admitted(runs, hosted))

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert got == [True] * 200 and reads(raw) - before == 1  # 200 before
    for _ in range(250):  # a steady stream over 2.5 intervals of the test's clock
        clock.now += CACHE_S / 100
        assert await admitted(runs, hosted)
    assert reads(raw) - before == 3  # one read per interval


class Clock:
    """The run-key check's clock, moved by the test: the bound is asserted, not timed."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Counted:
    """The real board's ``statuses``, counted (and, with ``then``, the clock moved while the
    read is out: a slow read)."""

    def __init__(self, board: LeaseBoard, then: Callable[[], None] | None = None) -> None:
        self.calls, self._real, self._then = 0, board.statuses, then

    async def __call__(self, names: list[str]) -> Any:
        self.calls += 1
        if self._then is not None:
            self._then()
        await anyio.sleep(0.05)  # the others arrive while it is out
        return await self._real(names)


async def test_a_run_no_longer_running_has_its_key_refused_within_the_bound(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
) -> None:
    _, hosted, raw = replica
    clock = Clock()
    runs = RunCredentials(hosted.config, clock=clock)
    holder_says(raw, "Running")
    assert await admitted(runs, hosted)
    holder_says(raw, "Suspended")  # the holder writes it at once on the change
    clock.now += CACHE_S * 0.9
    assert await admitted(runs, hosted)  # within the bound: the read before the change
    clock.now += CACHE_S * 0.2
    assert not await admitted(runs, hosted)  # past it: refused
    holder_says(raw, "Running")
    clock.now += CACHE_S * 1.1
    assert await admitted(runs, hosted)


async def test_requests_that_waited_for_a_slow_read_all_take_it(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The review's finding: a read slower than ``CACHE_S`` woke its waiters to a result they
    took as stale, and each queued a read of its own (one read per request again)."""
    _, hosted, raw = replica
    clock = Clock()
    runs = RunCredentials(hosted.config, clock=clock)
    assert hosted.leased is not None
    board = hosted.leased.board

    def slow() -> None:
        clock.now += 2 * CACHE_S

    counted = Counted(board, slow)
    monkeypatch.setattr(board, "statuses", counted)
    holder_says(raw, "Running")
    got: list[bool] = []

    async def one() -> None:
        got.append(await admitted(runs, hosted))

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    # the first request's read; the others came while it was out, after it was sent, and take
    # the one read sent after they came (before: a read per request, 20)
    assert got == [True] * 20 and counted.calls == 2


async def test_an_unreachable_board_is_refused_and_not_asked_again_per_request(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
    redis_engine: Redis,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, hosted, _ = replica
    runs = RunCredentials(hosted.config, clock=Clock())
    assert hosted.leased is not None
    counted = Counted(hosted.leased.board)
    monkeypatch.setattr(hosted.leased.board, "statuses", counted)
    redis_engine.stop()
    try:
        for _ in range(20):
            with pytest.raises(StateUnavailable):
                await runs.admit(KEY, hosted)
        assert counted.calls == 1  # one failed read, not twenty
    finally:
        redis_engine.start()
