"""A hosted agent's run key presented to a replica that does not run the agent
(``gateway.runtime.runkeys``), on a real Redis: the holder's status is read at most once per
``CACHE_S``, and a run that stops being Running still has its key refused within that bound.

Before: every request with such a key read the lease board (an ``MGET``): 200 requests, 200
reads. Counted by Redis itself (``INFO commandstats``), never by a stand-in.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
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
    runs, hosted, raw = replica
    holder_says(raw, "Running")
    before = reads(raw)
    got: list[bool] = []

    async def one() -> None:
        got.append(await admitted(runs, hosted))

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(one)
    assert got == [True] * 200 and reads(raw) - before == 1  # 200 before
    started = time.monotonic()
    while time.monotonic() - started < 2.5 * CACHE_S:  # a steady stream: one read per interval
        assert await admitted(runs, hosted)
        await anyio.sleep(0.01)
    assert reads(raw) - before <= 4


async def test_a_run_no_longer_running_has_its_key_refused_within_the_bound(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
) -> None:
    runs, hosted, raw = replica
    holder_says(raw, "Running")
    assert await admitted(runs, hosted)
    holder_says(raw, "Suspended")  # the holder writes it at once on the change
    changed = time.monotonic()
    while await admitted(runs, hosted):
        await anyio.sleep(0.01)
    assert time.monotonic() - changed <= CACHE_S + 0.2
    holder_says(raw, "Running")
    resumed = time.monotonic()
    while not await admitted(runs, hosted):
        await anyio.sleep(0.01)
    assert time.monotonic() - resumed <= CACHE_S + 0.2


async def test_an_unreachable_board_is_refused_and_not_asked_again_per_request(
    replica: tuple[RunCredentials, HostedAgents, redis.Redis],
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    runs, hosted, _ = replica
    redis_engine.stop()
    try:
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(StateUnavailable):
                await runs.admit(KEY, hosted)
        assert time.monotonic() - started < 2 * 2  # one failed read (its timeout), not twenty
    finally:
        redis_engine.start()
