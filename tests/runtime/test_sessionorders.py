"""Session agents on the shared board and the orders their process takes
(``gateway.runtime.sessionorders``, ``gateway.state.sessionboard``), on a real Redis: two
processes' runtimes in one test, each with its own board, as two replicas have.

Attacks: orders that are not whole, stale, or name an agent the process does not hold as a
session agent (a hosted agent's id, an id it never had) are taken and not acted on; a
process's records go when its agents end, and expire when it stops renewing.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import redis

from gateway.context import Principal
from gateway.errors import AgentTerminated
from gateway.runtime import AgentState
from gateway.runtime.agents import hosted_principal
from gateway.runtime.core import AgentRuntime
from gateway.runtime.sessionorders import SessionAgents
from gateway.state.redisclient import open_redis
from gateway.state.sessionboard import INBOX, SAGENT, SessionBoard
from tests.runtime.test_core import Recorder, agent_of, runtime
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio
ADMIN = "admin-alice"
BOUND_S = 10.0  # the bound of each wait (a renewal), not a timing assertion


async def _until(what: str, check: Any) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND_S:g} s: {what}"
        await anyio.sleep(0.05)


@pytest.fixture
async def two(redis_engine: Redis) -> AsyncIterator[list[tuple[Recorder, AgentRuntime, SessionAgents]]]:  # noqa: F811
    redis.Redis.from_url(redis_engine.url).flushall()
    client = open_redis(redis_engine.url, 2)
    out = []
    for owner in ("replica-a", "replica-b"):
        rec, rt = runtime()
        out.append((rec, rt, SessionAgents(rt, rec, SessionBoard(client, owner=owner))))
    async with anyio.create_task_group() as tg:
        for *_, s in out:
            tg.start_soon(s.run)
        yield out
        tg.cancel_scope.cancel()
    await client.aclose()


async def test_an_order_passed_by_one_process_is_carried_out_by_the_holder(
    two: Any,
    redis_engine: Redis,  # noqa: F811
) -> None:
    (rec_a, rt_a, _), (_, _, b) = two
    r = redis.Redis.from_url(redis_engine.url)
    agent = agent_of(rt_a)
    await _until("on the board at once", lambda: r.hlen(SAGENT + agent.id) == 1)
    holders = await b.pass_order(agent.id, "terminate", ADMIN, "done")
    assert list(holders) == ["replica-a"] and holders["replica-a"]["state"] == "Ready"
    await _until("terminated on A", lambda: agent.state is AgentState.TERMINATED)
    with pytest.raises(AgentTerminated):
        rt_a.agents.for_session(Principal(id="alice"), "client", "s1")  # its session makes no new one
    [(doc, who)] = [(d, p) for t, d, p, _ in rec_a.events if t == "agent.terminate_requested"]
    assert who == ADMIN and doc["via"] == "replica-b" and doc["agent"] == agent.id
    # ended: its record leaves the board, so no process holds it any more
    await _until("its record gone", lambda: r.hlen(SAGENT + agent.id) == 0)
    assert await b.pass_order(agent.id, "suspend", ADMIN, "") == {}


async def test_the_holder_acts_only_on_whole_fresh_orders_for_its_session_agents(
    two: Any,
    redis_engine: Redis,  # noqa: F811
) -> None:
    (rec_a, rt_a, _), _ = two
    agent = agent_of(rt_a)
    hosted = rt_a.agents.add_hosted("worker", hosted_principal("worker", _ac()), priority=4, run=1)
    rt_a.agents.transition(hosted, AgentState.READY, "ready")
    r = redis.Redis.from_url(redis_engine.url)
    fresh = {"action": "terminate", "by": ADMIN, "reason": "", "via": "x", "at": time.time()}
    for bad in ("not json", json.dumps(["terminate"]), json.dumps({**fresh, "agent": 7}),
                json.dumps({**fresh, "agent": agent.id, "at": time.time() - 3600}),  # stale
                json.dumps({**fresh, "agent": agent.id, "action": "kill"}),
                json.dumps({**fresh, "agent": hosted.id}),  # a hosted agent: by its lease only
                json.dumps({**fresh, "agent": "agt-aaaaaaaaaaaaaaaaaaaa"})):  # fmt: skip
        r.rpush(INBOX + "replica-a", bad)
    await _until("the orders taken", lambda: r.exists(INBOX + "replica-a") == 0)
    await anyio.sleep(0.2)
    assert agent.state is AgentState.READY and hosted.state is AgentState.READY
    refused = [d["result"] for t, d, *_ in rec_a.events if t == "agent.terminate_requested"]
    assert len(refused) == 2 and all(x.startswith("refused") for x in refused)


async def test_a_process_that_stops_renewing_leaves_no_holder_behind(redis_engine: Redis) -> None:  # noqa: F811
    client = open_redis(redis_engine.url, 2)
    (rec, rt), (rec_b, rt_b) = runtime(), runtime()
    a = SessionAgents(rt, rec, SessionBoard(client, owner="replica-a", ttl_ms=500))
    b = SessionAgents(rt_b, rec_b, SessionBoard(client, owner="replica-b"))
    agent = agent_of(rt)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await anyio.sleep(0.2)
        assert list(await b.pass_order(agent.id, "suspend", ADMIN, "")) == ["replica-a"]
        tg.cancel_scope.cancel()  # A dies: it no longer renews
    await anyio.sleep(0.6)
    assert await b.pass_order(agent.id, "suspend", ADMIN, "") == {}  # expired: nobody holds it
    await client.aclose()


def _ac() -> Any:
    from gateway.config.sections import AgentConfig

    return AgentConfig(command="/bin/true")
