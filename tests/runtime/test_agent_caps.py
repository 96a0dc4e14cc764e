"""One principal cannot take every agent slot (red team /tmp/rt-runtime A5): on the stateless
2026-07-28 protocol one API key made a new agent per declared client name until
``runtime.max_concurrent_agents`` was reached, and every other principal's new session was
refused (``agent_limit``). ``runtime.max_agents_per_principal`` caps one principal's session
agents, and one slot per configured hosted agent is kept for it. Registry units, then the real
``symbi serve`` front with SDK clients and real API keys."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.context import Principal
from gateway.errors import AgentLimitReached
from gateway.events import LoggingSink
from gateway.runtime import AgentRegistry, AgentState
from tests.bus.test_http_bus import agent, bus_config, make_keys
from tests.server.http.conftest import run_server


def _mcp_error(e: BaseException) -> MCPError:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    assert isinstance(e, MCPError), e
    return e


MALLORY = Principal(id="mallory", source="key", claims={"key_id": "k1"})
CAROL = Principal(id="carol", source="key", claims={"key_id": "k2"})


def test_one_principal_stops_at_its_cap_and_others_still_get_agents() -> None:
    reg = AgentRegistry(LoggingSink(), max_agents=10, max_per_principal=3)
    made = [reg.for_session(MALLORY, f"m{i}", "key:k1") for i in range(3)]
    with pytest.raises(AgentLimitReached) as e:
        reg.for_session(MALLORY, "m3", "key:k1")
    assert e.value.code == "agent_limit"
    assert reg.for_session(CAROL, "ide", "key:k2").state is AgentState.READY
    # an ended agent frees its principal's slot
    reg.transition(made[0], AgentState.TERMINATED, "shutdown: idle")
    assert reg.for_session(MALLORY, "m3", "key:k1").state is AgentState.READY


def test_the_slots_kept_for_hosted_agents_are_theirs() -> None:
    reg = AgentRegistry(LoggingSink(), max_agents=4, max_per_principal=10, reserved=1)
    for i in range(3):
        reg.for_session(Principal(id=f"p{i}", source="key"), "c", "http:s")
    with pytest.raises(AgentLimitReached):
        reg.for_session(CAROL, "ide", "http:t")  # the last slot is the hosted agent's
    hosted = reg.add_hosted(
        "mailer", Principal(id="agent:mailer", kind="agent", source="key"), priority=0, run=1
    )
    assert reg.live() == 4 and hosted.hosted


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_stateless_client_cannot_fill_the_gateway_by_varying_its_client_name(tmp_path: Path) -> None:
    cfg = bus_config(tmp_path, "[runtime]\nmax_concurrent_agents = 20\nmax_agents_per_principal = 4\n")
    keys = make_keys(cfg)  # "a": principal tester; "out": principal outsider
    with run_server(cfg) as srv:
        made: set[str] = set()
        refused: list[MCPError] = []
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {keys['a']}"}, timeout=60) as hc:
            for i in range(8):
                info = types.Implementation(name=f"m{i}", version="1")
                try:
                    async with Client(
                        streamable_http_client(srv.mcp, http_client=hc), mode="2026-07-28", client_info=info
                    ) as c:
                        r = await c.session.read_resource("bus://inbox")
                        made.add(json.loads(r.contents[0].text)["agent"])  # type: ignore[union-attr]
                except Exception as e:  # noqa: BLE001 - the SDK may wrap it in an ExceptionGroup
                    refused.append(_mcp_error(e))
        assert len(made) == 4 and len(refused) == 4
        assert all((e.error.data or {}).get("code") == "agent_limit" for e in refused)
        async with agent(srv.mcp, keys["out"]) as other:  # another principal still gets an agent
            assert other.id and other.id not in made
