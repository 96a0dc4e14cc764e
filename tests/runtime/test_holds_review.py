"""Principal holds (``gateway.runtime.holds``) and the operator's agent actions
(``gateway.server.operations``), attacked again: session 42's read-only review. Runtimes on
one real Redis stand for replicas; the admin operations are called with a stand-in of the
HTTP state holding only what they read.

Before:
- the hook telling that Redis refused a hold (the audit record) ran unguarded inside the
  background writer of holds: the audit log broken with ``on_failure = "deny"`` raised
  ``AuditError`` there and ended the task, every later hold unwritten and unread;
- an operator's resume looked its agent up again after the clear's round trip to Redis: a ref
  grown ambiguous meanwhile (an id prefix another agent's id now shares) was answered 200
  "Terminated" for an agent still suspended, the principal's other agents here left suspended;
- ``symbi status`` (and the 507s) named this process's bound where Redis's had refused.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from gateway.audit.log import AuditLog
from gateway.config.model import Config
from gateway.context import Principal
from gateway.errors import AgentSuspended, AuditError
from gateway.runtime import AgentState
from gateway.runtime.agents import Agent
from gateway.runtime.core import AgentRuntime
from gateway.runtime.holds import Hold, PrincipalHolds
from gateway.runtime.identity import make_agent_id
from gateway.runtime.sessionorders import SessionAgents
from gateway.runtime.status import principal_holds
from gateway.server.operations import act_on_agent, act_on_principal
from gateway.state.holdboard import CHANGED, HELD, VERSION, HoldBoard
from gateway.state.redisclient import open_redis
from gateway.state.sessionboard import SessionBoard
from tests.conftest import RecordingSink
from tests.runtime.test_holds import ALICE, until
from tests.runtime.test_holds_operator import state_of
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio
S = AgentState
KEY = b"k" * 32  # the agent id key: ids known to the test
BOB = Principal(id="bob", source="key")


@pytest.fixture
async def on_redis(redis_engine: Redis) -> AsyncIterator[aioredis.Redis]:  # noqa: F811 - the fixture
    redis.Redis.from_url(redis_engine.url).flushall()
    client = open_redis(redis_engine.url, 2)
    try:
        yield client
    finally:
        await client.aclose()


def runtime_with(sink: RecordingSink) -> AgentRuntime:
    return AgentRuntime(Config(), sink, key=KEY)


def replica(client: aioredis.Redis, sink: RecordingSink, *, shared_limit: int | None = None) -> AgentRuntime:
    """A runtime whose holds are on Redis (its writer not started: the test runs it)."""
    holds = PrincipalHolds()
    holds.board = HoldBoard(client, limit=shared_limit or holds.limit)
    return AgentRuntime(Config(), sink, key=KEY, holds=holds)


async def _suspended(rt: AgentRuntime, session: str) -> Agent:
    agent = rt.agents.for_session(ALICE, "c", session)
    rt.begin(agent, "t")
    rt.suspend(agent, "budget breach")
    return agent


@pytest.mark.slow
async def test_a_hook_that_raises_does_not_end_the_writer_of_holds(
    on_redis: aioredis.Redis,
    redis_engine: Redis,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Redis at its bound refuses alice's hold; telling it (``on_unshared``: the runtime's audit
    record) raises ``AuditError``, the log broken with ``on_failure = "deny"``. Before, the
    writer of holds ended with it: bob's hold, made next, never reached Redis."""
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    rt = replica(on_redis, RecordingSink(log), shared_limit=1)
    holds, board = rt.holds, rt.holds.board
    assert board is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(holds.run)
        await until("read Redis", lambda: holds.confirmed is not None)
        await board.hold("key:p0", {"reason": "x"}, 0.0)  # another replica's: Redis is full
        await _suspended(rt, "s1")  # recorded while the log works
        log.close()  # broken from now on: every emit raises AuditError (deny)
        await until("Redis refused alice", lambda: ALICE.qualified in holds.unshared)
        board.limit = 10
        holds.add(Hold("key:bob", "x", by="ops", at=1.0))
        assert await holds.flush(5.0)  # before: the task was gone, AuditError out of it
        tg.cancel_scope.cancel()
    assert redis.Redis.from_url(redis_engine.url).hexists(HELD, "key:bob")


def _sharing(prefix: str, principal: str) -> str:
    """A session whose agent of ``principal`` (client "c") has an id beginning with ``prefix``."""
    for i in range(1_000_000):
        if make_agent_id(KEY, principal, "c", f"x{i}").startswith(prefix):
            return f"x{i}"
    raise AssertionError(f"no session's agent id begins with {prefix}")


@pytest.mark.slow
async def test_a_resume_acts_on_the_agent_it_cleared_for_whatever_its_ref_names_after(
    on_redis: aioredis.Redis,
    redis_engine: Redis,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator resumes alice's agent by an id prefix. While its clear is written to Redis,
    bob connects: his new agent's id shares the prefix. Before: the second look-up found no one
    (ambiguous), the answer was 200 "Terminated" for an agent still suspended, and alice's
    other suspended agent here stayed suspended (this process's writer of holds stopped: no
    mirror to catch up). An agent that really ended meanwhile: its real state, the hold dropped."""
    rt = replica(on_redis, RecordingSink())
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.holds.run)
        await until("read Redis", lambda: rt.holds.confirmed is not None)
        agent = await _suspended(rt, "s1")
        other = rt.agents.for_session(ALICE, "c", "s2")
        with pytest.raises(AgentSuspended):
            rt.begin(other, "t")
        assert await rt.holds.flush(5.0)
        tg.cancel_scope.cancel()  # no reader from now on: what is cleared here, the resume did
    ref = agent.id[:6]
    assert rt.agents.resolve(ref) is agent
    board = rt.holds.board
    assert board is not None
    written = board.clear

    async def clear_while_bob_connects(principal: str) -> tuple[bool, int]:
        out = await written(principal)
        rt.agents.for_session(BOB, "c", _sharing(ref, BOB.qualified))
        return out

    monkeypatch.setattr(board, "clear", clear_while_bob_connects)
    status, body = await act_on_agent(state_of(rt), ref, "resume", "ops", "checked")
    assert rt.agents.resolve(ref) is None  # ambiguous now
    assert status == 200, body
    assert body["agent"] == agent.id and body["state"] == agent.state.value != "Terminated"
    assert agent.state is not S.SUSPENDED and other.state is not S.SUSPENDED  # both suspended before
    assert not rt.holds.holding(ALICE.qualified) and rt.holds.unwritten == 0
    assert not redis.Redis.from_url(redis_engine.url).hexists(HELD, ALICE.qualified)

    # an agent that ends while its clear is written: the hold goes here too, its state told
    ended = await _suspended(rt, "s3")
    other = rt.agents.for_session(ALICE, "c", "s4")
    with pytest.raises(AgentSuspended):
        rt.begin(other, "t")

    async def clear_while_it_ends(principal: str) -> tuple[bool, int]:
        out = await written(principal)
        rt.terminate(ended, "its session closed")
        return out

    monkeypatch.setattr(board, "clear", clear_while_it_ends)
    status, body = await act_on_agent(state_of(rt), ended.id, "resume", "ops", "checked")
    assert status == 200, body
    assert body["state"] == "Terminated" and other.state is not S.SUSPENDED
    assert not rt.holds.holding(ALICE.qualified)


@pytest.mark.slow
async def test_a_hold_redis_refused_is_shown_with_redis_bound(
    on_redis: aioredis.Redis,
) -> None:
    """This process's bound is 10,000, Redis's (another replica's config, or a test's) 1: the
    status and the 507s named 10,000 principals held, where one was."""
    rt = replica(on_redis, RecordingSink(), shared_limit=1)
    board = rt.holds.board
    assert board is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(rt.holds.run)
        await until("read Redis", lambda: rt.holds.confirmed is not None)
        await board.hold("key:p0", {"reason": "x"}, 0.0)
        agent = await _suspended(rt, "s1")
        await until("Redis refused alice", lambda: ALICE.qualified in rt.holds.unshared)
        shown = principal_holds(rt)
        assert shown is not None and shown["held_in_this_process_only"] == [ALICE.qualified]
        assert shown["shared_limit"] == 1 and shown["limit"] == rt.holds.limit  # no shared_limit before
        status, body = await act_on_agent(state_of(rt), agent.id, "suspend", "ops", "")
        assert status == 507 and body["limit"] == 1, body
        status, body = await act_on_principal(state_of(rt), "key:carol", "suspend", "ops", "")
        assert status == 507 and body["limit"] == 1, body
        tg.cancel_scope.cancel()


@pytest.mark.slow
async def test_what_redis_holds_cannot_end_the_writer_of_holds(
    on_redis: aioredis.Redis,
    redis_engine: Redis,  # noqa: F811 - the fixture
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anything that can write Redis puts text where the holds' version goes: the read failed
    with a ``ValueError`` the task did not catch, and the task ended (the gateway with it).
    Now the mirror goes unconfirmed (session agents refused: fail closed) until it reads again."""
    rt = replica(on_redis, RecordingSink())
    holds = rt.holds
    plain = redis.Redis.from_url(redis_engine.url)
    async with anyio.create_task_group() as tg:
        tg.start_soon(holds.run)
        await until("read Redis", lambda: holds.confirmed is not None)
        plain.set(VERSION, "not a number")
        plain.publish(CHANGED, "1")  # the task wakes and reads the version
        await until(  # the bad version was read (a fixed sleep could end before it)
            "the bad version read",
            lambda: any("could not be read from the shared state" in r.getMessage() for r in caplog.records),
        )
        plain.set(VERSION, "7")
        holds.add(Hold("key:bob", "x", by="ops", at=1.0))
        assert await holds.flush(5.0)  # before: the task was gone
        seen = time.monotonic()
        await until("read again", lambda: (holds.confirmed or 0) > seen)
        tg.cancel_scope.cancel()
    assert plain.hexists(HELD, "key:bob")


async def test_a_suspension_the_audit_log_cannot_record_still_holds_its_principal(tmp_path: Path) -> None:
    """The audit log broken (``on_failure = "deny"``): the agent's state event raised before the
    state hooks ran, so the agent was suspended and its principal not held, alice's other
    sessions let in once the log works again. The state hooks follow the state now."""
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    rt = runtime_with(RecordingSink(log))
    agent = rt.agents.for_session(ALICE, "c", "s1")
    rt.begin(agent, "t")
    log.close()
    with pytest.raises(AuditError):
        rt.suspend(agent, "budget breach")
    assert agent.state is S.SUSPENDED
    assert rt.holds.holding(ALICE.qualified)  # False before


@pytest.mark.slow
async def test_an_order_the_audit_log_cannot_record_does_not_end_the_session_orders_task(
    on_redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Orders passed to this process (``pass_session_action``) emit audit events; the log
    broken (deny) raised ``AuditError`` out of the task taking them: it ended (the gateway with
    it), and the orders taken with the failing one were lost. Now each is carried out alone."""
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    a = runtime_with(RecordingSink(log))
    first, second = (a.agents.for_session(p, "c", "s1") for p in (ALICE, BOB))
    for agent in (first, second):
        a.begin(agent, "t")  # Running: a suspension is at once
    holder = SessionAgents(a, a.events, SessionBoard(on_redis, owner="replica-a"))
    other = SessionAgents(
        runtime_with(RecordingSink()), RecordingSink(), SessionBoard(on_redis, owner="replica-b")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(holder.run)
        for _ in range(100):  # until A's agents are on the board (its first renewal)
            if await other.board.holders(second.id):
                break
            await anyio.sleep(0.05)
        log.close()
        assert await other.pass_order(first.id, "suspend", "ops", "x")
        await until("A took it", lambda: first.state is S.SUSPENDED)
        await anyio.sleep(0.2)
        assert await other.pass_order(second.id, "suspend", "ops", "x")  # the task still runs
        await until("A carried out the next one", lambda: second.state is S.SUSPENDED)
        tg.cancel_scope.cancel()
