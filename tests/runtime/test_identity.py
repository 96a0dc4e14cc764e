"""Agent identity: every session is an agent whose id the gateway makes; clients cannot pick it.

Unit tests on the registry, then attacks over real streamable HTTP (uvicorn on 127.0.0.1,
the real server-everything upstream, the real Rego engine, the real audit log).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, RequestParamsMeta

from gateway.context import Principal
from gateway.events import LoggingSink
from gateway.runtime import AgentRegistry, AgentState
from gateway.runtime.identity import ID_PREFIX, clean_label
from tests.conftest import EVERYTHING_JS, write_config
from tests.server.http.conftest import bearer, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

ALICE = Principal(id="alice", roles=("developer",), source="key")
BOB = Principal(id="bob", roles=("developer",), source="key")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details), agent))


def test_same_session_same_agent_and_every_part_changes_the_id() -> None:
    reg = AgentRegistry(LoggingSink())
    a = reg.for_session(ALICE, "claude-code", "http:s1")
    assert a.id.startswith(ID_PREFIX) and a.state is AgentState.READY
    assert reg.for_session(ALICE, "claude-code", "http:s1") is a
    others = [
        reg.for_session(BOB, "claude-code", "http:s1"),  # another principal, same client and session
        reg.for_session(ALICE, "cursor", "http:s1"),
        reg.for_session(ALICE, "claude-code", "http:s2"),
    ]
    assert len({a.id, *(o.id for o in others)}) == 4
    assert reg.get(a.id) is a and reg.by_name("alice/claude-code") is a
    assert reg.by_name("alice/claude-code#2") is others[2]  # same principal+client, second session


@pytest.mark.parametrize(
    "other",
    [
        Principal(id="alice", source="jwt", issuer="https://idp.example.com/"),
        Principal(id="alice", source="stdio"),
        Principal(id="alice", source="anonymous"),
        Principal(id="alice", source="jwt", issuer="https://other.example.com/"),
        Principal(id="key:alice", source="key"),  # an id that looks like a qualified one
    ],
)
def test_a_principal_of_another_namespace_never_takes_an_api_key_principals_name(other: Principal) -> None:
    """Red team A1: the first session took ``alice/claude-code`` whatever its namespace."""
    reg = AgentRegistry(LoggingSink())
    first = reg.for_session(other, "claude-code", "http:evil")
    victim = reg.for_session(ALICE, "claude-code", "http:victim")
    assert victim.name == "alice/claude-code" and reg.by_name("alice/claude-code") is victim
    assert not first.name.startswith("alice/") and "#" not in first.name


def test_ids_are_not_reproducible_without_the_registry_key() -> None:
    one = AgentRegistry(LoggingSink()).for_session(ALICE, "x", "stdio")
    two = AgentRegistry(LoggingSink()).for_session(ALICE, "x", "stdio")
    assert one.id != two.id  # an HMAC under a per-gateway key, not a guessable hash


@pytest.mark.parametrize(
    "declared", ["bob/claude", "agt-aaaaaaaaaaaaaaaaaaaa", "../../etc", "", None, "x" * 500, 42]
)
def test_declared_client_name_is_only_a_prefixed_label(declared: object) -> None:
    reg = AgentRegistry(LoggingSink())
    victim = reg.for_session(BOB, "claude", "http:b")
    agent = reg.for_session(ALICE, declared, "http:a")
    assert agent.id != victim.id and agent.name.startswith("alice/")
    assert agent.name != victim.name and "/" not in agent.name.removeprefix("alice/")
    assert len(agent.client) <= 64 and agent.client == clean_label(declared)


def test_registering_emits_one_state_event_and_runs_hooks() -> None:
    rec = Recorder()
    reg = AgentRegistry(rec)
    seen: list[str] = []
    gone: list[str] = []
    reg.on_register.append(lambda ag: seen.append(ag.id))
    reg.on_unregister.append(lambda ag: gone.append(ag.id))
    a = reg.for_session(ALICE, "c", "stdio")
    assert seen == [a.id]
    states = [e for e in rec.events if e[0] == "agent.state"]
    assert [(d["from"], d["to"]) for _, d, _ in states] == [("Initializing", "Ready")]
    assert states[0][2] == a.id  # the event is recorded against the agent
    with pytest.raises(ValueError):
        reg.remove(a)  # only Terminated agents leave the registry
    reg.transition(a, AgentState.TERMINATED, "shutdown")
    reg.remove(a)
    assert gone == [a.id] and reg.get(a.id) is None and reg.by_name(a.name) is None


# -- over HTTP: the policy sees input.agent; the audit log records it; spoofing does nothing ----

AGENT_POLICY = """
package symbi
import rego.v1

default decision := {"allow": false, "reasons": ["only alice's trusted-client agent may call"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    startswith(input.agent.id, "agt-")
    input.agent.name == "alice/trusted-client"
    input.agent.state == "Ready"
    input.agent.hosted == false
    input.agent.priority == 4  # runtime.default_priority
}
"""


def _config(tmp_path: Path) -> Path:
    policy = tmp_path / "agent-policy.rego"
    policy.write_text(AGENT_POLICY)
    return write_config(
        tmp_path,
        f"""
        [policy]
        path = "{policy}"

        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )


async def _session_call(
    mcp: str, headers: dict[str, str], client: str, meta: RequestParamsMeta | None = None
) -> Any:
    async with (
        httpx2.AsyncClient(headers=headers) as hc,
        streamable_http_client(mcp, http_client=hc) as (r, w),
        ClientSession(r, w, client_info=Implementation(name=client, version="1")) as s,
    ):
        await s.initialize()
        return await s.call_tool("everything__echo", {"message": f"from {client}"}, meta=meta)


def _registered(run: Any) -> dict[str, str]:
    """Agent name -> id, from the audit trail (a session's agent ends when its session does)."""
    gw = run.state.gateway
    assert gw.audit is not None
    gw.audit.flush(timeout=5)
    return {
        e["details"]["name"]: e["details"]["agent"]
        for e in gw.audit.recent(200)
        if e["type"] == "agent.registered"
    }


def _calls(run: Any) -> list[dict[str, Any]]:
    gw = run.state.gateway
    assert gw.audit is not None
    gw.audit.flush(timeout=5)
    return [e for e in gw.audit.recent(200) if e["type"] == "tool.call"]


@pytest.mark.anyio
async def test_policy_sees_the_agent_and_a_client_cannot_claim_another_agents_id(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    keys = make_keys(cfg)  # alice (admin, developer), bob (developer)
    with run_server(cfg) as run:
        ok = await _session_call(run.mcp, bearer(keys.admin), "trusted-client")
        assert not ok.is_error
        alice_agent = _registered(run)["alice/trusted-client"]
        [first] = _calls(run)
        assert first["agent"] == alice_agent and first["principal"] == "alice"

        # bob: declares alice's client name, sends her agent id in a header and in _meta
        spoof = {**bearer(keys.user), "X-Symbi-Agent": alice_agent, "X-Agent-Id": alice_agent}
        # an open map (extra_items=Any), whose extra keys mypy does not accept in a literal yet
        meta = cast(RequestParamsMeta, {"symbi/agent": alice_agent, "agent": alice_agent})
        denied = await _session_call(run.mcp, spoof, "alice/trusted-client", meta=meta)
        assert (
            denied.is_error and denied.meta["symbi/error"]["code"] == "unknown_tool"
        )  # hidden from bob = missing (item 13)  # type: ignore[index]
        second = _calls(run)[-1]
        assert second["principal"] == "bob" and second["agent"] not in (None, alice_agent)
        assert _registered(run)["bob/alice-trusted-client"] == second["agent"]


def test_another_principal_cannot_ride_an_agents_session(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.admin)})
        sid = r.headers["mcp-session-id"]
        hijack = httpx.post(
            run.mcp,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "everything__echo", "arguments": {"message": "x"}},
            },
            headers={
                **MCP_HEADERS,
                **bearer(keys.user),
                "mcp-session-id": sid,
                "mcp-protocol-version": "2025-11-25",
            },
        )
        assert hijack.status_code == 404  # the SDK binds a session to the credential that opened it
        assert _calls(run) == []


def test_principals_of_different_sources_never_share_an_agent() -> None:
    """Attack: a JWT with sub=alice (or one carrying a key_id claim) took the agent, and so the
    memory, of the API key principal alice in the same client and session."""
    reg = AgentRegistry(LoggingSink())
    key_alice = Principal(id="alice", roles=("developer",), claims={"key_id": "k1"}, source="key")
    hosted = reg.add_hosted(
        "clock", Principal(id="agent:clock", kind="agent", source="key"), priority=0, run=1
    )
    reg.bind_credential("k1", hosted)
    assert reg.for_session(key_alice, "claude-code", "http:s1") is hosted  # the key's own credential
    jwt_alice = Principal(
        id="alice",
        roles=("developer",),
        claims={"sub": "alice", "key_id": "k1"},
        source="jwt",
        issuer="https://idp.example",
    )
    mine = reg.for_session(jwt_alice, "claude-code", "http:s1")
    assert mine is not hosted  # a key_id claim in a JWT names no credential
    plain_key_alice = Principal(id="alice", roles=("developer",), claims={"key_id": "k2"}, source="key")
    theirs = reg.for_session(plain_key_alice, "claude-code", "http:s1")
    other_issuer = Principal(
        id="alice", claims={"sub": "alice"}, source="jwt", issuer="https://other.example"
    )
    third = reg.for_session(other_issuer, "claude-code", "http:s1")
    assert len({mine.id, theirs.id, third.id, hosted.id}) == 4
    assert mine.owner != theirs.owner != third.owner


def test_a_2026_session_label_is_not_an_agent_identity() -> None:
    """Attack: in the 2026 era ``mcp-session-id`` is whatever the client sends; two principals
    sending the same label got the same agent session key (and a DELETE naming it ended the
    other's agents)."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from gateway.server.principals import agent_session_key, http_session_key

    def ctx(era: str) -> Any:
        headers = [(b"mcp-session-id", b"shared-label"), (b"mcp-protocol-version", era.encode())]
        return SimpleNamespace(request=Request({"type": "http", "headers": headers}))  # a real request

    alice = Principal(id="alice", claims={"key_id": "k1"}, source="key")
    mallory = Principal(id="mallory", claims={"sub": "mallory"}, source="jwt", issuer="https://idp.example")
    modern = {agent_session_key(ctx("2026-07-28"), p) for p in (alice, mallory)}
    assert len(modern) == 2 and http_session_key("shared-label") not in modern
    # handshake era: the SDK issued the id and bound it to its opener's credential
    assert agent_session_key(ctx("2025-11-25"), alice) == http_session_key("shared-label")


def test_session_agents_take_the_configured_default_priority(tmp_path: Path) -> None:
    from gateway.config.load import load_config
    from gateway.runtime.core import AgentRuntime

    cfg = load_config(write_config(tmp_path, "[runtime]\ndefault_priority = 7\n"))
    rt = AgentRuntime(cfg, LoggingSink(), key=b"k" * 32)
    assert rt.agents.for_session(ALICE, "claude-code", "http:s1").priority == 7
    assert AgentRegistry(LoggingSink(), default_priority=2).for_session(ALICE, "x", "stdio").priority == 2


def test_an_agent_id_is_the_prefix_and_20_lowercase_base32_characters() -> None:
    """Found by mutation testing (group "runtime-security"): the id's documented form
    (``agt-`` + 20 base32 characters, lower case) was checked by its prefix only."""
    a = AgentRegistry(LoggingSink()).for_session(ALICE, "c", "stdio")
    assert re.fullmatch(r"agt-[a-z2-7]{20}", a.id)
