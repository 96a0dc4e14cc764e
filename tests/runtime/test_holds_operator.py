"""An operator's suspensions and clears of principals (``gateway.runtime.holds``), attacked:
session 41's findings. Two runtimes on one real Redis stand for two replicas; the admin
operations (``gateway.server.operations``) are called with a stand-in of the HTTP state holding
only what they read (the gateway's runtime, its event sink, the config).

Before:
- a resume refused with 409 (the agent Running, nothing held here) had already queued a clear
  for Redis: a hold another replica had just made was lifted by a refused request;
- a clear made while Redis was down was answered 202 ("pending") and kept only in memory: the
  principal was let in here at once while every other replica refused it, and the clear was
  lost if the process stopped before Redis came back;
- past ``HOLDS_MAX`` held principals the oldest hold was dropped: a flood of suspensions
  un-suspended the first.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import redis

from gateway.cli import main as symbi_main
from gateway.config.model import Config
from gateway.errors import AgentError, InvalidTransition
from gateway.events import Event
from gateway.principals import principal_malformed, principal_unknown
from gateway.runtime import AgentState
from gateway.runtime.agents import Agent
from gateway.runtime.core import AgentRuntime
from gateway.runtime.holds import PrincipalHolds
from gateway.runtime.sessionorders import SessionAgents
from gateway.runtime.status import principal_holds
from gateway.server.operations import act_on_agent, act_on_principal
from gateway.state.holdboard import HELD, HoldBoard
from gateway.state.redisclient import open_redis
from gateway.state.sessionboard import SessionBoard
from tests.conftest import RecordingSink
from tests.runtime.test_holds import ALICE, held, replicas, runtime, until  # noqa: F401 - a fixture
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio
S = AgentState


def state_of(rt: AgentRuntime) -> Any:
    """What ``act_on_principal`` / ``act_on_agent`` read of the HTTP state."""
    gw = SimpleNamespace(runtime=rt, events=rt.events, state=None, hosted=None, audit=None)  # (no audit log)
    return SimpleNamespace(gateway=gw, config=Config())


# -- naming the principal -------------------------------------------------------------------------


def test_a_principal_of_a_kind_the_gateway_never_makes_is_refused() -> None:
    """ "kye:bob" was answered "suspended" and held no one. Malformed (a kind no gateway makes):
    refused outright; well-formed but not of this gateway's config (a JWT of another issuer or
    with no ``[http.jwt]``, an anonymous principal not its own): no such principal here."""
    issuer, anon = "https://idp.example", "guest"
    malformed, unknown = principal_malformed, principal_unknown  # none before
    for ok in ("key:bob", f"jwt:{issuer}#bob", "anonymous:guest"):
        assert malformed(ok) is None and unknown(ok, jwt_issuer=issuer, anonymous=anon) is None, ok
    for bad in ("kye:bob", "bob", "key:", "jwt:bob", "jwt:#bob", "stdio:local", "KEY:bob", "anonymous:"):
        assert malformed(bad) is not None, bad
    for elsewhere in ("jwt:https://other.example#bob", "anonymous:someone"):
        assert malformed(elsewhere) is None
        assert unknown(elsewhere, jwt_issuer=issuer, anonymous=anon) is not None, elsewhere
    for off in (f"jwt:{issuer}#bob", "anonymous:guest"):  # no [http.jwt], no anonymous principal
        assert unknown(off, jwt_issuer=None, anonymous=None) is not None, off


def test_the_cli_refuses_a_principal_of_an_unknown_kind_before_asking(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No gateway at the URL: a refusal naming ``--principal`` (exit 2) proves nothing was sent.
    A resume is sent as named (a hold made before the kinds were checked is cleared by it)."""
    url = "http://127.0.0.1:9"  # nothing listens: a request would fail otherwise
    for action in ("suspend",):
        with pytest.raises(SystemExit) as out:
            symbi_main(["agents", action, "--principal", "kye:bob", "--url", url])
        assert out.value.code == 2
        assert "--principal" in capsys.readouterr().err


# -- a refused resume writes nothing --------------------------------------------------------------


@pytest.mark.slow
async def test_a_refused_resume_queues_no_clear_of_another_replicas_hold(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
) -> None:
    a, b = replicas
    running = a.agents.for_session(ALICE, "c", "s1")
    a.begin(running, "t")
    b.suspend_principal(ALICE.qualified, "audit", "ops")  # A has not read it yet: same tick
    with pytest.raises(InvalidTransition):
        a.resume(running, "operator: resume")  # 409: Running, nothing held here
    assert a.holds.unwritten == 0  # 1 before: the clear, written after B's hold, lifted it
    status, _ = await act_on_agent(state_of(a), running.id, "resume", "ops", "")
    assert status == 409 and a.holds.unwritten == 0
    assert await b.holds.flush(2.0)
    await until("A holds alice", lambda: held(a))
    assert held(b)


# -- a clear Redis cannot take ------------------------------------------------------------------


async def _suspended_on_redis(rt: AgentRuntime) -> Agent:
    """A session agent of alice's suspended by its budget, its principal's hold on Redis."""
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    rt.suspend(agent, "budget breach")
    assert await rt.holds.flush(2.0)
    return agent


@pytest.mark.slow
async def test_a_clear_redis_cannot_take_is_refused_and_changes_nothing(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    a, b = replicas
    suspended = await _suspended_on_redis(a)
    await until("B holds alice", lambda: held(b))
    redis_engine.stop()
    try:
        status, body = await act_on_principal(state_of(a), ALICE.qualified, "resume", "ops", "checked")
        assert status == 503, body  # 202 "pending" before: let in here, the clear in memory only
        assert body["code"] == "state_unavailable"
        status, body = await act_on_agent(state_of(a), suspended.id, "resume", "ops", "checked")
        assert status == 503, body
        assert suspended.state is S.SUSPENDED and held(a) and a.holds.unwritten == 0
    finally:
        redis_engine.start()
    await until("A reads Redis again", lambda: a.holds.confirmed is not None and not a.holds.unwritten)


@pytest.mark.slow
async def test_a_clear_is_on_redis_when_it_is_answered(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    """The other half: a clear answered 200 is on Redis already (nothing left in memory)."""
    a, b = replicas
    suspended = await _suspended_on_redis(a)
    status, body = await act_on_agent(state_of(a), suspended.id, "resume", "ops", "checked")
    assert status == 200, body
    assert suspended.state is S.RUNNING and a.holds.unwritten == 0
    assert not redis.Redis.from_url(redis_engine.url).hexists(HELD, ALICE.qualified)
    await until("B lets alice in", lambda: not held(b))


# -- the bound -------------------------------------------------------------------------------------


async def test_past_the_bound_a_new_suspension_is_refused_and_none_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the 4th suspension of a bound of 3 dropped the 1st (it was let in again)."""
    rt = runtime(PrincipalHolds(limit=3))
    for i in range(3):
        rt.suspend_principal(f"key:p{i}", "x", "ops")
    with pytest.raises(AgentError) as refused:
        rt.suspend_principal("key:p3", "x", "ops")
    assert refused.value.code == "holds_full"
    status, body = await act_on_principal(state_of(rt), "key:p4", "suspend", "ops", "")
    assert status == 507 and body["code"] == "holds_full"
    # an agent's own suspension past the bound: the agent is suspended, its principal not held
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    with caplog.at_level(logging.ERROR, logger="symbi.runtime"):
        rt.suspend(agent, "budget breach")
    assert agent.state is S.SUSPENDED
    assert any("not held" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert [h.principal for h in rt.holds.all()] == ["key:p0", "key:p1", "key:p2"]


async def test_redis_refuses_a_hold_past_the_bound_and_drops_none(
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    redis.Redis.from_url(redis_engine.url).flushall()
    client = open_redis(redis_engine.url, 1)
    try:
        board = HoldBoard(client, limit=2)
        for i in range(2):
            assert (await board.hold(f"key:p{i}", {"reason": "x"}, float(i)))[0] is True
        new, _ = await board.hold("key:p2", {"reason": "x"}, 2.0)
        assert new is None  # refused; before: held, and key:p0 (the oldest) dropped
        _, docs = await board.snapshot()
        assert sorted(docs) == ["key:p0", "key:p1"]
    finally:
        await client.aclose()


# -- the session's review ------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_suspension_redis_refuses_is_not_answered_suspended(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
) -> None:
    """Review: Redis at its bound (two replicas near it each took a new principal) refused the
    hold, yet the operator was answered 200 "suspended", while only this process held it."""
    a, b = replicas
    assert a.holds.board is not None and b.holds.board is not None
    a.holds.board.limit = b.holds.board.limit = 2
    for i in range(2):  # another replica's holds, not read here yet
        await b.holds.board.hold(f"key:p{i}", {"reason": "x"}, float(i))
    status, body = await act_on_principal(state_of(a), "key:victim", "suspend", "ops", "")
    assert status == 507, body
    assert body["code"] == "holds_full"
    assert "key:victim" in a.holds.unshared and not b.holds.holding("key:victim")


@pytest.mark.slow
async def test_a_resume_is_not_undone_by_a_hold_queued_before_it(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    """Review: a hold still queued here (not yet written: Redis slow or down) was written after
    the operator's clear, which goes to Redis at once, and won: the resume answered 200, and
    every replica held the principal again."""
    a, b = replicas
    a.suspend_principal("key:x", "x", "ops")  # queued; the writer task has not run (no await)
    assert a.holds.unwritten == 1
    status, body = await act_on_principal(state_of(a), "key:x", "resume", "ops", "")
    assert status == 200, body
    assert await a.holds.flush(5.0)
    await b.holds.flush(5.0)
    assert not redis.Redis.from_url(redis_engine.url).hexists(HELD, "key:x")
    assert not a.holds.holding("key:x") and not b.holds.holding("key:x")


# -- session 42 ------------------------------------------------------------------------------------


def _refusals(rt: AgentRuntime) -> list[dict[str, Any]]:
    assert isinstance(rt.events, RecordingSink)
    return [d for t, d in rt.events.events if t == Event.PRINCIPAL_HOLD_REFUSED]


async def test_an_operators_suspend_of_an_agent_past_the_bound_says_its_principal_is_not_held() -> None:
    """Before: the agent was suspended, its principal not held (logged only), and the operator's
    ``symbi agents suspend AGENT`` was answered 200 "suspended": alice's other sessions called on.
    Now 507 ``holds_full`` (as a principal's suspension past the bound), the agent still
    suspended (fail closed), on the audit record and in ``symbi status``."""
    rt = runtime(PrincipalHolds(limit=1))
    rt.suspend_principal("key:p0", "x", "ops")
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    status, body = await act_on_agent(state_of(rt), agent.id, "suspend", "ops", "")
    assert status == 507, body  # 200 before
    assert body["code"] == "holds_full" and body["principal_held"] is False
    assert body["state"] == "Suspended" and agent.state is S.SUSPENDED
    assert not held(rt)  # what the 507 says: alice's other sessions are not refused
    assert [(d["principal"], d["in_force"]) for d in _refusals(rt)] == [(ALICE.qualified, "nowhere")]
    shown = principal_holds(rt)
    assert shown is not None and shown["status"] == "degraded" and shown["not_held"] == [ALICE.qualified]
    status, body = await act_on_agent(state_of(rt), agent.id, "resume", "ops", "")
    assert status == 200, body
    assert principal_holds(rt) is None  # resumed: nothing left to show


async def test_status_stops_showing_an_unheld_principal_once_its_agent_ended() -> None:
    """The principal an agent's suspension past the bound left unheld was kept in a list of its
    own, shown by ``symbi status`` (degraded) after the agent's session ended. It is read from
    the agents now: gone with the agent."""
    rt = runtime(PrincipalHolds(limit=1))
    rt.suspend_principal("key:p0", "x", "ops")
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    assert (await act_on_agent(state_of(rt), agent.id, "suspend", "ops", ""))[0] == 507
    assert principal_holds(rt) is not None
    rt.terminate(agent, "the session ended")
    assert principal_holds(rt) is None  # degraded for good before


@pytest.mark.slow
async def test_a_hold_redis_refuses_is_on_the_record_and_in_status(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
) -> None:
    """Before: a hold Redis refused past its bound was in force in this process only, the other
    replicas letting the principal in, logged at ERROR and nowhere else."""
    a, b = replicas
    assert a.holds.board is not None
    a.holds.board.limit = 1
    await a.holds.board.hold("key:p0", {"reason": "x"}, 0.0)
    agent = a.agents.for_session(ALICE, "c", "s1")
    a.begin(agent, "t")
    a.suspend(agent, "budget breach")
    await until("Redis refused alice", lambda: ALICE.qualified in a.holds.unshared)
    assert [(d["principal"], d["in_force"]) for d in _refusals(a)] == [(ALICE.qualified, "this process only")]
    shown = principal_holds(a)
    assert shown is not None and shown["held_in_this_process_only"] == [ALICE.qualified]
    status, body = await act_on_agent(state_of(a), agent.id, "suspend", "ops", "")
    assert status == 507 and body["code"] == "holds_full", body  # already suspended: still told
    assert held(a) and not held(b)


@pytest.mark.slow
async def test_a_resume_whose_clear_is_written_is_not_refused_after_it(
    replicas: tuple[AgentRuntime, AgentRuntime],  # noqa: F811 - the fixture
    redis_engine: Redis,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the operator's resume wrote its clear to Redis, then this process's own reader
    (woken by that clear) resumed the agent before the resume ran; the resume found it Ready,
    nothing held, and answered 409, its clear having lifted the hold everywhere. Whether the
    resume is refused is decided before the write; once written it is done."""
    a, b = replicas
    agent = await _suspended_on_redis(a)
    await until("B holds alice", lambda: held(b))
    board = a.holds.board
    assert board is not None
    written = board.clear

    async def clear_then_read(principal: str) -> tuple[bool, int]:
        out = await written(principal)
        await until("A read the clear", lambda: not a.holds.holding(principal))  # its reader won
        return out

    monkeypatch.setattr(board, "clear", clear_then_read)
    status, body = await act_on_agent(state_of(a), agent.id, "resume", "ops", "checked")
    assert status == 200, body  # 409 before, the hold already cleared on Redis
    assert agent.state is not S.SUSPENDED and a.holds.unwritten == 0
    assert not redis.Redis.from_url(redis_engine.url).hexists(HELD, ALICE.qualified)
    await until("B lets alice in", lambda: not held(b))
    running = a.agents.for_session(ALICE, "c", "s9")
    a.begin(running, "t")
    monkeypatch.undo()
    b.suspend_principal(ALICE.qualified, "audit", "ops")  # A has not read it yet
    status, body = await act_on_agent(state_of(a), running.id, "resume", "ops", "")
    assert status == 409 and a.holds.unwritten == 0  # still refused before any write
    assert await b.holds.flush(2.0)
    await until("A holds alice", lambda: held(a))


@pytest.mark.slow
async def test_a_resume_passed_to_the_sessions_process_is_on_redis_before_it_acts(
    redis_engine: Redis,  # noqa: F811 - the fixture
) -> None:
    """Before: the process holding the session carried out a resume passed to it
    (``pass_session_action``) with the clear queued in memory: its agent was let in at once,
    and a process stopping before the write left the principal held on every other replica.
    Here A's writer of holds is stopped once alice's hold is on Redis: the clear is written
    by the resume itself, or never."""
    redis.Redis.from_url(redis_engine.url).flushall()
    client = open_redis(redis_engine.url, 2)
    holds = PrincipalHolds()
    holds.board = HoldBoard(client, limit=holds.limit)
    a = runtime(holds)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.holds.run)
            await until("A read Redis", lambda: a.holds.confirmed is not None)
            agent = await _suspended_on_redis(a)
            tg.cancel_scope.cancel()  # A writes no queued change from now on
        b = SessionAgents(runtime(), RecordingSink(), SessionBoard(client, owner="replica-b"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(SessionAgents(a, a.events, SessionBoard(client, owner="replica-a")).run)
            for _ in range(100):  # until A's agent is on the board (its first renewal)
                if await b.pass_order(agent.id, "resume", "ops", "checked"):
                    break
                await anyio.sleep(0.05)
            else:
                pytest.fail("A's session agent never reached the board")
            await until("A resumed it", lambda: agent.state is not S.SUSPENDED, bound_s=10.0)
            tg.cancel_scope.cancel()
        assert not redis.Redis.from_url(redis_engine.url).hexists(HELD, ALICE.qualified)  # held before
        assert a.holds.unwritten == 0  # 1 before: the clear, in memory only
    finally:
        await client.aclose()
