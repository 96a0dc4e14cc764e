"""A session agent's suspension is its principal's (``gateway.runtime.holds``), attacked in
process: a real ``AgentRuntime`` and the call chain's agent and schedule steps, the data dir's
file, and two runtimes on one real Redis standing for two replicas.

Before: a budget breach (or ``suspend_agent``) suspended the session's agent only; the same
key's next session -- or a stateless client declaring another client name -- got a fresh agent
and called on; and the calls it had queued behind the breach still ran, one after another.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from gateway.chain import build_chain
from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import CallContext, Decision, Principal, ToolInfo
from gateway.errors import AgentSuspended, AgentTerminated, StateUnavailable
from gateway.runtime import AgentState
from gateway.runtime.core import AgentRuntime
from gateway.runtime.holds import HoldFile, PrincipalHolds
from gateway.state.holdboard import HoldBoard
from gateway.state.redisclient import open_redis
from gateway.steps.agent import AgentStep
from gateway.steps.schedule import ScheduleStep
from tests.conftest import RecordingSink
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio
S = AgentState
TOOL = ToolInfo(name="up__t", original_name="t", upstream="up", definition={}, annotations={})
ALICE = Principal(id="alice", source="key")


def runtime(holds: PrincipalHolds | None = None, **resources: Any) -> AgentRuntime:
    section = RuntimeSection.model_validate({"resources": resources})
    return AgentRuntime(Config(runtime=section), RecordingSink(), holds=holds)


class Upstream:
    """Where the chain ends: counts what reached it; sleeps ``delay`` first."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.reached = 0

    async def __call__(self, call: CallContext) -> Any:
        self.reached += 1
        await anyio.sleep(self.delay)
        return "result"


def call_of(rt: AgentRuntime, who: Principal, client: str, session: str, **cond: Any) -> CallContext:
    agent = rt.agents.for_session(who, client, session)
    decision = Decision(allow=True, conditions=cond) if cond else None
    p = Principal(id=who.id, source=who.source, agent=agent.id)
    return CallContext(principal=p, kind="tools/call", target="up__t", tool=TOOL, decision=decision)


async def outcome(chain: Any, call: CallContext) -> str:
    try:
        await chain(call)
    except Exception as e:  # noqa: BLE001 - the outcome is the error's type
        return type(e).__name__
    return "ok"


async def test_a_budget_breach_holds_every_session_of_the_principal_until_an_operator_clears_it() -> None:
    rt = runtime(execution_timeout_s=0.2)
    up = Upstream(delay=1.0)
    chain = build_chain([AgentStep(rt), ScheduleStep(rt)], up)
    assert await outcome(chain, call_of(rt, ALICE, "claude", "s1")) == "BudgetExceeded"
    up.delay = 0.0
    # the same key: a new session, and a stateless client declaring another client name
    for client, session in (("claude", "s2"), ("other-name", "key:k1")):
        assert await outcome(chain, call_of(rt, ALICE, client, session)) == "AgentSuspended"
    bob = Principal(id="bob", source="key")
    assert await outcome(chain, call_of(rt, bob, "claude", "s1")) == "ok"  # not bob's
    assert up.reached == 2  # the breach and bob's
    assert [h.principal for h in rt.holds.all()] == ["key:alice"]
    fresh = rt.agents.for_session(ALICE, "claude", "s2")
    assert fresh.state is S.SUSPENDED
    assert rt.resume(fresh, "operator: checked") == "resumed (and 2 more of key:alice)"
    assert rt.holds.all() == []
    for client, session in (("claude", "s1"), ("claude", "s2"), ("claude", "s3")):
        assert await outcome(chain, call_of(rt, ALICE, client, session)) == "ok"


async def test_the_refusal_says_whose_suspension_it_is_and_how_to_clear_it() -> None:
    rt = runtime()
    chain = build_chain([AgentStep(rt), ScheduleStep(rt)], Upstream())
    await outcome(chain, call_of(rt, ALICE, "c", "s1", suspend_agent="exfiltration"))
    with pytest.raises(AgentSuspended) as err:
        await chain(call_of(rt, ALICE, "c", "s2"))
    assert any("key:alice" in r and "exfiltration" in r for r in err.value.reasons)
    assert any("resume --principal key:alice" in r for r in err.value.reasons)


async def test_calls_queued_behind_a_breach_never_reach_the_upstream() -> None:
    """Five calls of one agent with one slot: the first breaches its budget, the agent is
    suspended; before, the four waiting for the slot then ran each to its budget."""
    rt = runtime(execution_timeout_s=0.2, max_concurrent_calls=1)
    up = Upstream(delay=1.0)
    chain = build_chain([AgentStep(rt), ScheduleStep(rt)], up)
    call = call_of(rt, ALICE, "c", "s1")
    got: list[str] = []

    async def one() -> None:
        got.append(await outcome(chain, call))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    assert up.reached == 1  # 5 before
    assert sorted(got) == ["AgentSuspended"] * 4 + ["BudgetExceeded"]


async def test_calls_queued_when_their_agent_is_terminated_never_reach_the_upstream() -> None:
    rt = runtime(max_concurrent_calls=1)
    up = Upstream(delay=0.3)
    chain = build_chain([AgentStep(rt), ScheduleStep(rt)], up)
    call = call_of(rt, ALICE, "c", "s1")
    got: list[str] = []

    async def one() -> None:
        got.append(await outcome(chain, call))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
        while up.reached < 1:  # one in flight, two waiting for its slot
            await anyio.sleep(0.01)
        agent = rt.agents.get(call.principal.agent)
        assert agent is not None
        rt.terminate(agent, "operator: enough")
    assert up.reached == 1 and sorted(got) == [AgentTerminated.__name__] * 2 + ["ok"]


def test_a_hold_survives_a_restart_in_the_data_dir_but_a_stdio_principals_does_not(tmp_path: Path) -> None:
    path = tmp_path / "principals-suspended.db"
    rt = runtime(PrincipalHolds(file=HoldFile(path)))
    for who in (ALICE, Principal(id="local", source="stdio")):
        agent = rt.agents.for_session(who, "c", "s1")
        rt.begin(agent, "t")
        rt.suspend(agent, "budget breach")
    rt.holds.close()
    again = runtime(PrincipalHolds(file=HoldFile(path)))  # the next process on this data dir
    assert [h.principal for h in again.holds.all()] == ["key:alice"]
    with pytest.raises(AgentSuspended):
        again.begin(again.agents.for_session(ALICE, "c", "s9"), "t")
    again.begin(again.agents.for_session(Principal(id="local", source="stdio"), "c", "stdio"), "t")
    assert again.resume(again.agents.for_session(ALICE, "c", "s9"), "operator") == "resumed"
    again.holds.close()
    assert PrincipalHolds(file=HoldFile(path)).all() == []


def test_a_hold_the_data_dir_cannot_take_is_still_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The review's attack: the file's write failing (disk full) was raised into the state
    listener, which logged it, and the principal was not held: a new session of the same key
    went through. The hold is in force first; the failed write is logged."""
    rt = runtime(PrincipalHolds(file=HoldFile(tmp_path / "principals-suspended.db")))

    def full(*_: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(HoldFile, "add", full)
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    rt.suspend(agent, "budget breach")
    with pytest.raises(AgentSuspended):
        rt.begin(rt.agents.for_session(ALICE, "c", "s2"), "t")
    rt.holds.close()
    logged = [r.levelname for r in caplog.records if "not written to the data dir" in r.getMessage()]
    assert logged == ["ERROR"]


def test_a_suspended_agent_is_told_so_while_the_shared_list_is_unconfirmed() -> None:
    """The review's finding: the shared list was read before the agent's own state, so a
    suspended agent got ``StateUnavailable`` ("retry") while Redis was stale, and a refused
    call had been counted in flight first. (The seam: a board that never confirmed, as after
    Redis went away; the real loop against a stopped Redis is tested above.)"""
    holds = PrincipalHolds()
    rt = runtime(holds)
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    rt.suspend(agent, "budget breach")
    holds.board = object()  # type: ignore[assignment]
    holds.confirmed = None
    with pytest.raises(AgentSuspended):
        rt.begin(agent, "t")
    other = rt.agents.for_session(ALICE, "c", "s2")
    with pytest.raises(StateUnavailable):
        rt.begin(other, "t")
    assert other.in_flight == 0 and other.calls == 0


# -- two replicas on one real Redis -------------------------------------------------------------


@pytest.fixture
async def replicas(
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> AsyncIterator[tuple[AgentRuntime, AgentRuntime]]:
    redis.Redis.from_url(redis_engine.url).flushall()
    clients = [open_redis(redis_engine.url, 2), open_redis(redis_engine.url, 2)]
    pair = []
    for client in clients:
        holds = PrincipalHolds()
        holds.board = HoldBoard(client, limit=holds.limit)
        pair.append(runtime(holds))
    try:
        async with anyio.create_task_group() as tg:
            for rt in pair:
                tg.start_soon(rt.holds.run)
            await until("both read Redis", lambda: all(r.holds.confirmed for r in pair))
            yield pair[0], pair[1]
            tg.cancel_scope.cancel()
    finally:
        for client in clients:
            await client.aclose()


async def until(what: str, check: Any, bound_s: float = 5.0) -> None:
    deadline = time.monotonic() + bound_s
    while not check():
        assert time.monotonic() < deadline, f"not within {bound_s:g} s: {what}"
        await anyio.sleep(0.02)


def held(rt: AgentRuntime) -> bool:
    try:
        rt.begin(rt.agents.for_session(ALICE, "c", f"s{time.monotonic_ns()}"), "t")
    except AgentSuspended:
        return True
    return False


@pytest.mark.slow
async def test_a_suspension_on_one_replica_holds_the_principal_on_the_other(
    replicas: tuple[AgentRuntime, AgentRuntime],
) -> None:
    a, b = replicas
    on_a = a.agents.for_session(ALICE, "c", "s1")
    a.begin(on_a, "t")
    a.suspend(on_a, "budget breach: 300 s")
    await until("B refuses alice's new session", lambda: held(b), bound_s=3.0)  # pub/sub: at once
    assert not held(a.__class__(Config(), RecordingSink()))  # a gateway of its own: nothing held
    with pytest.raises(AgentSuspended):
        b.begin(b.agents.for_session(ALICE, "c", "s2"), "t")
    # the operator clears it on B: A's suspended agent resumes, both let alice in
    b.resume(b.agents.for_session(ALICE, "c", "s3"), "operator: checked")
    assert await b.holds.flush(2.0)
    await until("A resumed its agent", lambda: on_a.state is S.RUNNING)  # its call still in flight
    assert not held(a) and not held(b)


@pytest.mark.slow
async def test_a_replica_that_cannot_read_the_holds_refuses_session_agents(
    replicas: tuple[AgentRuntime, AgentRuntime],
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    from gateway.runtime import holds as holds_mod

    a, _ = replicas
    assert not held(a)
    redis_engine.stop()
    try:
        seen = a.holds.confirmed
        assert seen is not None
        a.holds.confirmed = seen - holds_mod.STALE_S - 1  # as if STALE_S had passed without Redis
        with pytest.raises(StateUnavailable):
            held(a)
        hosted_ok = a.agents.for_session(Principal(id="local", source="stdio"), "c", "stdio")
        a.begin(hosted_ok, "t")  # a stdio principal's holds are this process's own
    finally:
        redis_engine.start()
    await until("confirmed again", lambda: not _stale(a), bound_s=10.0)
    assert not held(a)


def _stale(rt: AgentRuntime) -> bool:
    try:
        rt.holds.get("key:x")
    except StateUnavailable:
        return True
    return False
