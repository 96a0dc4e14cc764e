"""Agent ids that survive a gateway restart, so bus messages addressed to an agent that is
not running still reach it: a configured (hosted) agent keeps one id across runs and
restarts, and a stateless client (identified by its credential) keeps its id too.

Real parts: the whole gateway as ``make_gateway`` assembles it, twice on one data dir (the
embedded bus store, the key files, the audit log); the bus tools called through the chain
the way the MCP front calls them. The hosted agent's process is not started (``on-demand``):
its run is registered the way the supervisor registers it, which is what gives it its id.
"""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.boundary import error_result
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.errors import AgentTerminated
from gateway.events import LoggingSink
from gateway.runtime import AgentRegistry, AgentState
from gateway.runtime.agents import hosted_principal
from tests.conftest import write_config

pytestmark = pytest.mark.anyio

TESTER = Principal(
    id="tester", roles=("tester",), source="key"
)  # the hosted agent's principal is an API key one


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        """
        [sandbox]
        code_tools = false
        [agents.clock]
        command = "/bin/true"
        principal = "tester"
        roles = ["tester"]
        sandbox = "bwrap"
        start = "on-demand"
        restart = "never"
        """,
    )


async def call(gw: Gateway, who: Principal, tool: str, **args: Any) -> Any:
    try:
        result = await gw.call(
            CallContext(principal=who, kind="tools/call", target=f"bus__{tool}", arguments=args)
        )
    except Exception as e:  # noqa: BLE001 - the boundary
        result = error_result(e)
    assert not result.is_error, result
    return result.structured_content


def _as(gw: Gateway, principal: Principal, client: str, session: str) -> Principal:
    agent = gw.agents.for_session(principal, client, session)
    return dataclasses.replace(principal, agent=agent.id)


def _hosted_run(gw: Gateway, name: str, run: int) -> Principal:
    """What the supervisor does at the start of a run (gateway.runtime.hosted)."""
    principal = hosted_principal(name, gw.config.agents[name])
    agent = gw.agents.add_hosted(name, principal, priority=4, run=run)
    gw.agents.transition(agent, AgentState.READY, "test run")
    return dataclasses.replace(principal, agent=agent.id)


async def test_messages_wait_across_a_restart_for_hosted_and_stateless_agents(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    gw = make_gateway(cfg)
    async with gw.running():
        writer = _as(gw, TESTER, "writer", "http:session-1")
        reader = _as(gw, TESTER, "reader", "key:k-reader")  # a stateless (2026-era) client
        # the hosted agent has never run: its name still resolves (keys published at start)
        to_clock = await call(gw, writer, "send", to="clock", body="for the clock agent")
        to_reader = await call(gw, writer, "send", to=reader.agent, body="for the reader")
    clock_inbox, reader_id = to_clock["to"], reader.agent
    assert clock_inbox.startswith("agt-")

    again = make_gateway(load_config(_config(tmp_path)))  # a restart on the same data dir
    async with again.running():
        reader2 = _as(again, TESTER, "reader", "key:k-reader")
        assert reader2.agent == reader_id
        got = (await call(again, reader2, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(to_reader["id"], "for the reader")]
        clock = _hosted_run(again, "clock", run=1)
        assert clock.agent == clock_inbox
        got = (await call(again, clock, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(to_clock["id"], "for the clock agent")]
        # the next run of the same agent keeps the id: a message between runs waits for it
        run1 = again.agents.get(clock.agent)
        assert run1 is not None
        again.agents.transition(run1, AgentState.TERMINATED, "run ended")
        between = await call(again, reader2, "send", to="clock", body="between runs")
        clock2 = _hosted_run(again, "clock", run=2)
        assert clock2.agent == clock_inbox
        got = (await call(again, clock2, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(between["id"], "between runs")]
    key = cfg.data_dir / "agent-id-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_session_agents_still_differ_per_session_and_principal(tmp_path: Path) -> None:
    key = b"k" * 32
    one, two = AgentRegistry(LoggingSink(), key=key), AgentRegistry(LoggingSink(), key=key)
    # one key (one data dir): reproducible; a new session is a new agent, another principal too
    assert one.for_session(TESTER, "c", "key:k1").id == two.for_session(TESTER, "c", "key:k1").id
    assert one.for_session(TESTER, "c", "http:s1").id != one.for_session(TESTER, "c", "http:s2").id
    other = Principal(id="other", roles=("tester",))
    assert one.hosted_id("clock", "tester") != one.hosted_id("clock", "other")
    assert one.hosted_id("clock", "tester") != one.for_session(TESTER, "hosted:clock", "hosted").id
    assert one.for_session(other, "c", "key:k1").id != two.for_session(TESTER, "c", "key:k1").id
    # without the data dir's key nobody reproduces them
    assert AgentRegistry(LoggingSink()).hosted_id("clock", "tester") != one.hosted_id("clock", "tester")


def test_a_terminated_run_does_not_refuse_the_next_run_of_the_same_id(tmp_path: Path) -> None:
    from gateway.runtime.core import AgentRuntime

    cfg = load_config(_config(tmp_path))
    rt = AgentRuntime(cfg, LoggingSink(), key=b"k" * 32)
    principal = hosted_principal("clock", cfg.agents["clock"])
    run1 = rt.agents.add_hosted("clock", principal, priority=4, run=1)
    rt.agents.transition(run1, AgentState.READY, "started")
    rt.begin(run1, "a call")
    assert rt.terminate(run1, "operator") == "terminating (after its calls in flight)"
    # the supervisor ends a stopped run itself (Running -> Suspended -> Terminated)
    rt.agents.transition(run1, AgentState.SUSPENDED, "terminated by an operator")
    rt.agents.transition(run1, AgentState.TERMINATED, "manual override: run ended")
    run2 = rt.agents.add_hosted("clock", principal, priority=4, run=2)
    assert run2.id == run1.id
    rt.agents.transition(run2, AgentState.READY, "started")
    rt.begin(run2, "a call")  # not refused as "terminated": that was the previous run
    assert run2.state is AgentState.RUNNING


async def test_a_terminated_stateless_agent_stays_terminated_after_a_restart(tmp_path: Path) -> None:
    """A stateless client's session is its credential, the same after a restart: the operator's
    termination must outlive the process, or a restart would undo it. Sessions that cannot
    recur (handshake-era HTTP, stdio) are not written down."""
    cfg = load_config(_config(tmp_path))
    gw = make_gateway(cfg)
    async with gw.running():
        for principal, session in ((TESTER, "key:k-stolen"), (TESTER, "http:s-1"), (TESTER, "stdio")):
            agent = gw.agents.for_session(principal, "c", session)
            assert gw.runtime.terminate(agent, "operator: credential leaked") == "terminated"
        kept = gw.agents.for_session(TESTER, "c", "key:k-other")

    again = make_gateway(load_config(_config(tmp_path)))  # a restart on the same data dir
    async with again.running():
        with pytest.raises(AgentTerminated):
            again.agents.for_session(TESTER, "c", "key:k-stolen")
        other = Principal(id="other", roles=("tester",))
        assert again.agents.for_session(other, "c", "key:k-stolen").state is AgentState.READY  # not another's
        assert again.agents.for_session(TESTER, "c", "key:k-other").id == kept.id
        assert again.agents.for_session(TESTER, "c", "stdio").state is AgentState.READY  # a new process
    db = cfg.data_dir / "agents-ended.db"
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
