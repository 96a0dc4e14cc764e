"""Session agents ended with the audit log broken (a full disk, ``on_failure = "deny"``): the
first one's ``agent.state`` record raised ``AuditError`` out of ``close_session`` (a revoked
key's sweep, a client's DELETE) and the sweep, and the session's other agents were left
running, holding their slots. Now each is terminated (its state moves before its record), the
refused record logged. A real gateway's runtime, the log closed as a broken disk would leave it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.context import Principal
from gateway.errors import AuditError
from gateway.runtime import AgentState
from tests.conftest import write_config

pytestmark = pytest.mark.anyio

TESTER = Principal(id="tester", roles=("tester",), source="key")


def _config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, "[sandbox]\ncode_tools = false\n" + extra)


async def test_a_closed_session_ends_every_agent_of_it_with_the_log_broken(tmp_path: Path) -> None:
    gw = make_gateway(load_config(_config(tmp_path), {}))
    async with gw.running():
        agents = [gw.agents.for_session(TESTER, client, "s1") for client in ("a", "b", "c")]
        assert {a.state for a in agents} == {AgentState.READY}
        assert gw.audit is not None
        gw.audit.close()  # every record refused from now on
        assert gw.runtime.close_session("s1", "shutdown: the client closed its session") == 3
        assert {a.state for a in agents} == {AgentState.TERMINATED}


async def test_the_sweep_ends_every_idle_agent_with_the_log_broken(tmp_path: Path) -> None:
    gw = make_gateway(load_config(_config(tmp_path), {}))
    async with gw.running():
        agents = [gw.agents.for_session(TESTER, "a", session) for session in ("s1", "s2", "s3")]
        assert gw.audit is not None
        gw.audit.close()
        later = max(a.last_seen for a in agents) + gw.config.runtime.agent_idle_timeout_s + 1
        gw.runtime.sweep(now=later)
        assert {a.state for a in agents} == {AgentState.TERMINATED}


async def test_an_agent_mid_call_when_its_session_closed_ends_with_its_call_with_the_log_broken(
    tmp_path: Path,
) -> None:
    """Its Running -> Ready record refused, the terminate after it never ran: the agent stayed
    Ready (its slot held) until the idle sweep."""
    gw = make_gateway(load_config(_config(tmp_path), {}))
    async with gw.running():
        agent = gw.agents.for_session(TESTER, "a", "s1")
        gw.runtime.begin(agent, "tools/call everything__echo")
        assert agent.state is AgentState.RUNNING
        assert gw.runtime.close_session("s1", "shutdown: the client closed its session") == 1
        assert gw.audit is not None
        gw.audit.close()
        with pytest.raises(AuditError):  # the call's own end: its record refused, as any other
            gw.runtime.end(agent, 0.01, 10)
        assert agent.state.value == AgentState.TERMINATED.value  # (mypy narrowed it to RUNNING above)
