"""The re-check of parked agents another process held live (``Membership._recheck_left``),
and the park's turn with an agent back here meanwhile, on a real redis-server.

Review (session 43): every park of an agent another process held started a loop of its own
(a stateless client parked 20 times: 20 loops, 192 park scripts in 0.5 s); a Redis outage
longer than two tries ended the re-check for good; a park that waited its turn dropped the
fresh subscription of an agent back here meanwhile when Redis had lost its hold.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from gateway.context import Principal
from tests.bus.conftest import RedisServer
from tests.bus.test_core import C, Env
from tests.bus.test_redis_counts import _two, two  # noqa: F401 - two is the two processes' fixture
from tests.bus.test_redis_holds import NotedLock

pytestmark = pytest.mark.anyio

TICK_S = 0.05


def _counted(bus: Any) -> list[list[str]]:
    """The agents of each ``unsubscribe_parked`` call of ``bus``'s backend (the real one runs)."""
    ran: list[list[str]] = []
    real = bus.backend.unsubscribe_parked

    async def counted(agents: list[str]) -> list[str]:
        ran.append(list(agents))
        return await real(agents)  # type: ignore[no-any-return]

    bus.backend.unsubscribe_parked = counted
    return ran


async def test_parks_of_an_agent_held_elsewhere_share_one_recheck(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.bus.membership.RECHECK_LEFT_S", TICK_S)
    one, other = await _two(two)
    await other.register("agent-c", C.qualified)  # live on other for good
    ran = _counted(one)
    for _ in range(20):  # a stateless client back on `one` and gone again, 20 times
        await one.register("agent-c", C.qualified)
        task = one.park("agent-c")
        assert task is not None
        await task
    loops = [t for t in one._tasks if "_recheck_left" in repr(t.get_coro())]
    assert len(loops) == 1  # was 20
    ran.clear()
    await asyncio.sleep(10 * TICK_S)
    assert len(ran) <= 12  # about one script a tick at most (was ~190)
    for _ in range(200):  # and the one loop runs (a loaded machine may have run none yet)
        if ran:
            break
        await asyncio.sleep(TICK_S)
    assert ran and all(agents == ["agent-c"] for agents in ran)


async def test_the_recheck_outlives_a_redis_outage(
    two: Env,  # noqa: F811
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("gateway.bus.membership.RECHECK_LEFT_S", TICK_S)
    monkeypatch.setattr("gateway.bus.membership.BEAT_S", 0.01)
    one, other = await _two(two)
    await other.register("agent-c", C.qualified)
    await one.subscribe(C, "news")
    task = one.park("agent-c")
    assert task is not None
    await task
    ran = _counted(one)
    redis_server.stop()
    await asyncio.sleep(10 * TICK_S)
    assert len(ran) >= 4  # two tries a tick, tick after tick (was 2: then it ended)
    redis_server.start()
    ran.clear()
    await asyncio.sleep(4 * TICK_S)
    assert ran  # Redis back: looked at again (the fixture's Redis lost its data meanwhile)


async def test_a_park_waiting_its_turn_skips_an_agent_back_here_meanwhile(
    two: Env,  # noqa: F811
) -> None:
    one, _ = await _two(two)
    d = Principal(id="team", agent="agent-d", source="key")
    await one.register("agent-d", d.qualified)
    backend: Any = one.backend
    subs = backend.subs
    turn = subs._turn = NotedLock()
    async with turn:  # a resend of every hold runs
        park = asyncio.get_running_loop().create_task(one.backend.unsubscribe_parked(["agent-d"]))
        async with asyncio.timeout(30):  # it read agent-d's generation (its first step), waits its turn
            await turn.asked.wait()
        await one.register("agent-d", d.qualified)  # back here meanwhile
        await one.subscribe(d, "news")
        assert two.url is not None
        redis.Redis.from_url(two.url).delete(subs.held)  # its holds lapsed in Redis
    assert await park == []
    # was: set() (the park removed the fresh subscription of an agent live here)
    assert await one.backend.subscriptions_of("agent-d") == {"news"}
    assert "agent-d" in subs.mine
