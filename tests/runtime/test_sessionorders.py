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
from gateway.runtime import AgentState, orders, sessionorders
from gateway.runtime.agents import Agent, hosted_principal
from gateway.runtime.core import AgentRuntime
from gateway.runtime.orders import Order
from gateway.runtime.sessionorders import SessionAgents
from gateway.state.redisclient import open_redis
from gateway.state.sessionboard import INBOX, SAGENT, WAKE, SessionBoard
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


async def test_a_renewal_writes_only_what_changed(
    redis_engine: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessionorders, "RENEW_S", 0.1)  # many renewals within the test
    r: Any = redis.Redis.from_url(redis_engine.url)
    r.flushall()
    client = open_redis(redis_engine.url, 2)
    rec, rt = runtime()
    held = SessionAgents(rt, rec, SessionBoard(client, owner="replica-a"))

    def hsets() -> int:
        return int(r.info("commandstats").get("cmdstat_hset", {}).get("calls", 0))

    many = [agent_of(rt, session=f"s{i}") for i in range(20)]
    async with anyio.create_task_group() as tg:
        tg.start_soon(held.run)
        await _until("all on the board", lambda: all(r.hlen(SAGENT + a.id) == 1 for a in many))
        r.config_resetstat()
        await anyio.sleep(0.5)  # renewals: nothing changed
        assert hsets() == 0
        new = agent_of(rt, session="s-new")
        await _until("the new one on the board", lambda: r.hlen(SAGENT + new.id) == 1)
        rt.begin(many[0], "t")  # Ready -> Running
        await _until(
            "the changed one written", lambda: b"Running" in r.hget(SAGENT + many[0].id, "replica-a")
        )
        await anyio.sleep(0.5)
        assert hsets() == 2  # the new one and the changed one, once each
        r.flushall()  # Redis lost everything: the process finds itself gone and writes all again
        await _until("written again", lambda: all(r.hlen(SAGENT + a.id) == 1 for a in [*many, new]))
        tg.cancel_scope.cancel()
    await client.aclose()


def _a_holds_b_asks(url: str) -> tuple[Any, Any, SessionAgents, SessionAgents, Agent]:
    """Two replicas on a Redis emptied first: ``a`` runs a session agent, ``b`` passes orders.
    (raw client, the shared client, a, b, the agent)."""
    r: Any = redis.Redis.from_url(url)
    r.flushall()
    client = open_redis(url, 2)
    (rec, rt), (rec_b, rt_b) = runtime(), runtime()
    a = SessionAgents(rt, rec, SessionBoard(client, owner="replica-a"))
    b = SessionAgents(rt_b, rec_b, SessionBoard(client, owner="replica-b"))
    return r, client, a, b, agent_of(rt)


async def test_an_order_is_taken_when_left_not_at_the_next_poll(
    redis_engine: Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessionorders, "RENEW_S", 60.0)  # the poll: far beyond the bound of the wait
    r, client, a, b, agent = _a_holds_b_asks(redis_engine.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("on the board", lambda: r.hlen(SAGENT + agent.id) == 1)
        await _until("A listening", lambda: r.pubsub_numsub(WAKE + "replica-a")[0][1] == 1)
        assert list(await b.pass_order(agent.id, "terminate", ADMIN, "")) == ["replica-a"]
        await _until("terminated on A", lambda: agent.state is AgentState.TERMINATED)
        tg.cancel_scope.cancel()
    await client.aclose()


def _ac() -> Any:
    from gateway.config.sections import AgentConfig

    return AgentConfig(command="/bin/true")


async def test_a_record_of_an_earlier_version_counts_until_its_own_expiry(redis_engine: Redis) -> None:  # noqa: F811
    r = redis.Redis.from_url(redis_engine.url)
    r.flushall()
    client = open_redis(redis_engine.url, 2)
    board = SessionBoard(client, owner="replica-b")
    agent_id = "agt-aaaaaaaaaaaaaaaaaaaa"
    doc = {"name": "s", "state": "Ready", "principal": "alice"}
    # session 38's processes renewed each record's own "until" and wrote no liveness key
    r.hset(SAGENT + agent_id, "replica-old", json.dumps({**doc, "until": int(time.time() * 1000) + 60_000}))
    r.hset(SAGENT + agent_id, "replica-gone", json.dumps({**doc, "until": int(time.time() * 1000) - 1}))
    r.hset(SAGENT + agent_id, "replica-new-dead", json.dumps(doc))  # its liveness key expired
    assert list(await board.holders(agent_id)) == ["replica-old"]
    await client.aclose()


class _Skewed:
    """A replica's clock 60 s ahead (the rest of ``time`` as it is)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() + 60


async def test_an_order_from_a_replica_whose_clock_is_off_is_carried_out(
    two: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack (an ordinary fault): the passing replica's clock 60 s ahead. Orders were stamped
    with its clock and judged against the holder's: every suspend it passed was dropped there as
    stale (a warning in the holder's log), while the operator had a 202. Now both sides use
    Redis's clock."""
    (_, rt_a, _), (_, _, b) = two
    agent = agent_of(rt_a)
    await _until("on the board", lambda: bool(agent.id))
    monkeypatch.setattr(sessionorders, "time", _Skewed())
    deadline = time.monotonic() + BOUND_S
    while not await b.pass_order(agent.id, "suspend", ADMIN, "skewed"):
        assert time.monotonic() < deadline, "A's record never reached the board"
        await anyio.sleep(0.05)
    await _until("the suspension held on A", lambda: agent.suspend_pending is not None)


async def test_an_order_that_breaks_its_parsing_is_logged_and_the_orders_go_on(
    redis_engine: Redis,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an order whose parsing raises (an ``at`` past a float raised OverflowError; now refused
    # as malformed, so the seam: the real parser made to raise once, as a bug would) ended the
    # task group (and the gateway); now logged with its trace, and the next orders carried out
    real = orders.parse_order

    def once(raw: bytes | str, now: float | None = None) -> Order | None:
        monkeypatch.setattr(sessionorders, "parse_order", real)
        raise OverflowError("a bug")

    monkeypatch.setattr(sessionorders, "parse_order", once)
    r, client, a, _, agent = _a_holds_b_asks(redis_engine.url)
    bad = {"action": "terminate", "by": ADMIN, "reason": "", "via": "x", "agent": agent.id, "at": 10**400}
    # and one well-formed in the same batch: lost with the batch when the parse was outside
    # each order's own catch (taken off Redis, never carried out)
    then = Order(action="terminate", by=ADMIN, reason="", via="x", at=time.time(), agent=agent.id)
    r.rpush(INBOX + "replica-a", json.dumps(bad), then.dumps())
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("the order taken", lambda: r.exists(INBOX + "replica-a") == 0)
        await _until("logged", lambda: any(x.exc_info for x in caplog.records))
        [logged] = [x for x in caplog.records if x.exc_info]
        assert logged.levelname == "ERROR" and logged.exc_info and logged.exc_info[0] is OverflowError
        await _until("the next order carried out", lambda: agent.state is AgentState.TERMINATED)
        tg.cancel_scope.cancel()
    await client.aclose()
