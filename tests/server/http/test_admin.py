"""The admin REST API: checked against its own OpenAPI document (schemathesis + jsonschema)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from referencing import Registry, Resource
from schemathesis.checks import negative_data_rejection, not_a_server_error

from gateway.server.openapi import OPENAPI
from tests.server.http.conftest import Env, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT as INIT_BODY
from tests.server.http.test_auth import MCP_HEADERS as MCP

schema = schemathesis.openapi.from_dict(OPENAPI)
# One test per operation, each with its own id. schemathesis' own `schema.parametrize()` gives
# all of its items one node id, and pytest-xdist (make test) then runs one of the 26, not all.
# our own schema: every operation loads (an Err would fail here, at collection)
OPERATIONS = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]


def test_every_operation_of_the_document_is_tested() -> None:
    assert (
        len({op.label for op in OPERATIONS})
        == len(OPERATIONS)
        == len(
            [
                m
                for path in OPENAPI["paths"].values()
                for m in path
                if m in ("get", "post", "put", "patch", "delete")
            ]
        )
    )


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_admin_api_conforms_to_openapi(operation: Any, env: Env) -> None:
    # 501/503 are documented answers (component not wired yet), so "no 5xx" does not apply
    # (an undocumented 500 still fails the status-code check). "Negative data" such as an
    # object-typed ?limit= serialises to no parameter at all, a valid request: not checked.
    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    def conforms(case: Any) -> None:
        case.call_and_validate(
            base_url=env.run.base + "/api",
            headers=bearer(env.keys.admin),
            excluded_checks=[not_a_server_error, negative_data_rejection],
        )

    conforms()


def _validator(ref: str) -> jsonschema.Draft202012Validator:
    root = Resource.from_contents({"$schema": "https://json-schema.org/draft/2020-12/schema", **OPENAPI})
    registry = Registry().with_resource("urn:symbi:admin", root)
    return jsonschema.Draft202012Validator({"$ref": f"urn:symbi:admin{ref}"}, registry=registry)


def check(resp: httpx.Response, status: int, name: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    doc: dict[str, Any] = resp.json()
    _validator(f"#/components/schemas/{name}").validate(doc)
    return doc


def get(env: Env, path: str, key: str | None = None) -> httpx.Response:
    return httpx.get(env.run.base + "/api" + path, headers=bearer(key or env.keys.admin), timeout=10)


def test_tools_list_verification_state(env: Env) -> None:
    doc = check(get(env, "/tools"), 200, "ToolList")
    echo = next(t for t in doc["tools"] if t["name"] == "everything__echo")
    assert (echo["upstream"], echo["original_name"], echo["verification"]) == (
        "everything",
        "echo",
        "unverified",
    )


def test_upstreams_and_sessions(env: Env) -> None:
    doc = check(get(env, "/upstreams"), 200, "UpstreamList")
    assert [(u["name"], u["state"], u["transport"]) for u in doc["upstreams"]] == [
        ("everything", "up", "stdio")
    ]
    assert doc["upstreams"][0]["tools"] > 0
    doc = check(get(env, "/sessions"), 200, "SessionList")
    assert all(len(s["id"]) == 8 for s in doc["sessions"])  # never the full session id


def test_pins_are_listed_for_admins_only(env: Env) -> None:
    gw = env.run.state.gateway
    assert gw is not None
    gw.verifier.pins.approve(
        "tools.example",
        "lookup",
        key_fingerprint="sha256:" + "ab" * 32,
        definition_hash="cd" * 32,
        actor="test",
    )
    doc = check(get(env, "/pins"), 200, "PinList")
    assert {(p["domain"], p["tool_id"]) for p in doc["pins"]} >= {("tools.example", "lookup")}
    assert httpx.get(env.run.base + "/api/pins", headers=bearer(env.keys.user)).status_code == 403


def test_restart_unknown_upstream_is_404_and_known_is_documented(env: Env) -> None:
    r = httpx.post(env.run.base + "/api/upstreams/nope/restart", headers=bearer(env.keys.admin))
    check(r, 404, "Error")
    before = next(u for u in get(env, "/upstreams").json()["upstreams"] if u["name"] == "everything")[
        "restarts"
    ]
    r = httpx.post(env.run.base + "/api/upstreams/everything/restart", headers=bearer(env.keys.admin))
    check(r, 202, "Restarting")
    # who restarted it is on the record (it cuts every caller's calls in flight)
    asked = check(get(env, "/audit/query?type=upstream.restart_requested"), 200, "AuditEvents")["events"]
    assert asked and asked[-1]["principal"] == "alice" and asked[-1]["details"]["by"] == "alice"
    deadline = time.monotonic() + 30
    while True:  # it goes down and comes back, with its tools
        up = next(u for u in get(env, "/upstreams").json()["upstreams"] if u["name"] == "everything")
        if up["restarts"] > before and up["state"] == "up" and up["tools"] > 0:
            break
        assert time.monotonic() < deadline, up
        time.sleep(0.1)
    assert (
        httpx.post(
            env.run.base + "/api/upstreams/everything/restart", headers=bearer(env.keys.user)
        ).status_code
        == 403
    )


def test_audit_and_policy_status(env: Env) -> None:
    gw = env.run.state.gateway
    if getattr(gw, "audit", None) is None:  # auditing not assembled into this gateway
        assert check(get(env, "/audit/recent"), 503, "Unavailable")["component"] == "audit"
    else:
        events = check(get(env, "/audit/recent?limit=1000"), 200, "AuditEvents")["events"]
        assert events and all("chain_hash" in e for e in events)
        assert check(get(env, "/audit/verify"), 200, "AuditVerify")["ok"] is True
        assert httpx.get(env.run.base + "/readyz").json()["audit"] is True
    if getattr(gw, "policy", None) is None:
        assert check(get(env, "/policy/status"), 503, "Unavailable")["component"] == "policy"
    else:
        assert check(get(env, "/policy/status"), 200, "PolicyStatus")["loaded"] is True
        assert httpx.get(env.run.base + "/readyz").json()["policy"] is True


def test_audit_query_and_export(env: Env) -> None:
    if getattr(env.run.state.gateway, "audit", None) is None:
        pytest.skip("auditing is not assembled into this gateway")
    # a call that will be in the log, by a principal only this test uses
    key, _ = env.keys.store.create("query-user", ("developer",))
    r = httpx.post(env.run.mcp, json=INIT_BODY, headers={**MCP, **bearer(key)})
    sid = r.headers["mcp-session-id"]
    h = {**MCP, **bearer(key), "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    httpx.post(env.run.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "audited"}},
    }
    assert httpx.post(env.run.mcp, json=call, headers=h).status_code == 200
    env.run.state.gateway.audit.flush()  # type: ignore[union-attr]
    events = check(get(env, "/audit/query?principal=query-user&decision=allow"), 200, "AuditEvents")["events"]
    assert len(events) == 1 and events[0]["type"] == "tool.call"
    assert events[0]["principal"] == "query-user"
    assert (
        check(get(env, "/audit/query?principal=query-user&decision=deny"), 200, "AuditEvents")["events"] == []
    )
    export = get(env, "/audit/export?principal=query-user")
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in export.text.splitlines()]
    calls = [x for x in lines if x["type"] == "tool.call"]
    assert [x["seq"] for x in calls] == [events[0]["seq"]] and "signature" in calls[0]
    # the rest is the agent the gateway made for this session: registered, Initializing -> Ready,
    # and Ready -> Running -> Ready around the call
    assert [x["type"] for x in lines if x["type"] != "tool.call"] == ["agent.registered"] + [
        "agent.state"
    ] * 3
    assert {x["agent"] for x in lines} == {events[0]["agent"]} and events[0]["agent"].startswith("agt-")
    for bad in (
        "limit=0",
        "decision=maybe",
        "since_ns=soon",
        "color=red",
        f"until_ns={2**64}",
        "since_ns=-1",
    ):
        check(get(env, f"/audit/query?{bad}"), 400, "Error")
    # not a whole number: the same answer as one out of range (it was int()'s own text)
    zero = check(get(env, "/audit/export?limit=0"), 400, "Error")
    assert check(get(env, "/audit/export?limit=1e9"), 400, "Error") == zero


def test_audit_and_policy_off_answer_503(tmp_path: Path) -> None:
    cfg = everything_config(
        tmp_path, top_extra="[security]\naudit_enabled = false\nenforce_policies = false\n", policy=None
    )
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        for path, component in (
            ("/audit/recent", "audit"),
            ("/audit/verify", "audit"),
            ("/policy/status", "policy"),
        ):
            r = httpx.get(run.base + "/api" + path, headers=bearer(keys.admin))
            assert check(r, 503, "Unavailable")["component"] == component
        doc = httpx.get(run.base + "/readyz").json()
        assert "audit" not in doc and "policy" not in doc


def test_a_disabled_hosted_agent_is_not_reported_as_starting(tmp_path: Path) -> None:
    """``symbi agents run NAME`` of an agent with enabled = false answered 200 "starting" and
    nothing ran it (no supervisor waits for a disabled agent); examples/symbi.toml ships its
    clock agent disabled. Now 404 naming agents.NAME.enabled, and no run is recorded."""
    cfg = everything_config(tmp_path, top_extra='[agents.idle]\ncommand = "/bin/true"\nenabled = false\n')
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        r = httpx.post(run.base + "/api/agents/idle/run", headers=bearer(keys.admin))
        assert check(r, 404, "Error")["error"] == "not_found"
        agents = httpx.get(run.base + "/api/agents", headers=bearer(keys.admin)).json()["agents"]
        assert not [a for a in agents if a.get("name") == "idle"]


def test_recent_calls_limit_validation(env: Env) -> None:
    check(get(env, "/calls/recent?limit=5"), 200, "CallList")
    check(get(env, "/calls/recent?limit=0"), 400, "Error")
    check(get(env, "/calls/recent?limit=abc"), 400, "Error")


def test_openapi_document_is_served_to_admins_only(env: Env) -> None:
    assert get(env, "/openapi.json").json() == OPENAPI
    assert get(env, "/openapi.json", env.keys.user).status_code == 403


def test_policy_reload_refuses_a_broken_policy_and_keeps_the_old_one(tmp_path: Path) -> None:
    from tests.conftest import POLICY

    policy = tmp_path / "policy.rego"
    policy.write_text(POLICY.read_text())
    cfg = everything_config(tmp_path)
    cfg.write_text(cfg.read_text().replace(f'path = "{POLICY}"', f'path = "{policy}"'))
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        url = run.base + "/api/policy/reload"
        assert httpx.post(url, headers=bearer(keys.user)).status_code == 403
        before = check(get_at(run.base, "/policy/status", keys.admin), 200, "PolicyStatus")
        policy.write_text("package symbi\n\ndecision := {")  # does not parse
        r = check(httpx.post(url, headers=bearer(keys.admin)), 422, "PolicyReload")
        assert r["reloaded"] is False and r["loaded"] is True
        assert check(get_at(run.base, "/policy/status", keys.admin), 200, "PolicyStatus") == before
        policy.write_text(POLICY.read_text() + "\n# edited\n")
        r = check(httpx.post(url, headers=bearer(keys.admin)), 200, "PolicyReload")
        assert r["reloaded"] is True and r["loaded"] is True
        # who asked is on the record: both requests, the refused reload's and the loaded one's
        asked = check(
            get_at(run.base, "/audit/query?type=policy.reload_requested", keys.admin), 200, "AuditEvents"
        )["events"]
        assert [(e["principal"], e["details"]["reloaded"]) for e in asked] == [
            ("alice", False),
            ("alice", True),
        ]


def get_at(base: str, path: str, key: str) -> httpx.Response:
    return httpx.get(base + "/api" + path, headers=bearer(key), timeout=10)


def test_every_api_miss_is_json(env: Env) -> None:
    """Found by schemathesis: a newline in a path parameter matched no route and got text/plain."""
    for method, path in (
        ("GET", "/api/tools/%0A/diff"),
        ("POST", "/api/tools/%0A/approve"),
        ("GET", "/api/nope"),
    ):
        r = httpx.request(method, env.run.base + path, headers=bearer(env.keys.admin))
        assert r.status_code == 404 and check(r, 404, "Error")["error"] == "not_found"
    assert httpx.get(env.run.base + "/api/nope").status_code == 401  # still authenticated first


def _agent_session(env: Env, principal: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A handshake-era MCP session of a new developer key, after one echo call (so it has an
    agent): the key, its request headers and that call's body."""
    key, _ = env.keys.store.create(principal, ("developer",))
    r = httpx.post(env.run.mcp, json=INIT_BODY, headers={**MCP, **bearer(key)})
    h = {
        **MCP,
        **bearer(key),
        "mcp-session-id": r.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    httpx.post(env.run.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "hi"}},
    }
    assert httpx.post(env.run.mcp, json=call, headers=h).status_code == 200
    return key, h, call


def test_agents_status_and_health(env: Env) -> None:
    # an MCP session of its own, so there is an agent to look at and act on
    key, h, call = _agent_session(env, "agent-user")
    agents = check(get(env, "/agents"), 200, "AgentList")["agents"]
    mine = next(a for a in agents if a["principal"] == "agent-user")
    assert mine["state"] == "Ready" and mine["calls"] == 1 and mine["usage"]["calls"] == 1
    assert check(get(env, f"/agents/{mine['id']}"), 200, "Agent")["name"] == mine["name"]
    assert get(env, "/agents/agt-nosuchagent").status_code == 404

    def post(path: str, body: object = None) -> httpx.Response:
        return httpx.post(env.run.base + "/api" + path, json=body, headers=bearer(env.keys.admin), timeout=10)

    # Ready: the suspension waits for its next task, which it refuses
    assert (
        check(post(f"/agents/{mine['id']}/suspend", {"reason": "test"}), 200, "AgentAction")["result"]
        == "pending"
    )
    refused = httpx.post(env.run.mcp, json=call, headers=h)
    assert "agent_suspended" in refused.text
    assert check(get(env, f"/agents/{mine['id']}"), 200, "Agent")["state"] == "Suspended"
    assert check(post(f"/agents/{mine['id']}/resume"), 200, "AgentAction")["state"] == "Ready"
    assert post(f"/agents/{mine['id']}/resume").status_code == 409  # not suspended
    assert post(f"/agents/{mine['id']}/suspend", "not an object").status_code == 400
    assert "agent_suspended" not in httpx.post(env.run.mcp, json=call, headers=h).text
    assert check(post(f"/agents/{mine['id']}/terminate"), 200, "AgentAction")["state"] == "Terminated"
    assert "agent_terminated" in httpx.post(env.run.mcp, json=call, headers=h).text  # no new agent for it
    status = check(get(env, "/status"), 200, "HealthStatus")
    assert status["component_health"]["upstream:everything"]["status"] == "healthy"
    assert any(e["code"] == "agent_suspended" for e in status["recent_errors"])
    health = check(get(env, "/health"), 200, "Health")
    assert health["status"] == status["overall_status"] and health["components"]["policy"] == "healthy"
    assert get(env, "/status", key).status_code == 403  # admin only


def test_an_action_reason_that_is_not_utf8_is_refused(env: Env) -> None:
    """Attack: the reason's JSON holds the escape \\ud800 (``json.loads`` makes a lone surrogate
    of it). It was accepted (200) and kept as the agent's state reason: every later view and
    listing of the agents answered 500, the agent's next call 500, and the audit record of the
    state change lost its details. Now 400 naming where; the agent stays as it was."""
    _key, h, call = _agent_session(env, "reason-user")
    agents = check(get(env, "/agents"), 200, "AgentList")["agents"]
    mine = next(a for a in agents if a["principal"] == "reason-user")
    headers = {**bearer(env.keys.admin), "Content-Type": "application/json"}
    for body in (b'{"reason": "x\\ud800"}', b'{"reason": "ok", "n\\udcff": 1}'):
        refused = httpx.post(f"{env.run.base}/api/agents/{mine['id']}/suspend", content=body, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"] == "bad_request"
    assert check(get(env, f"/agents/{mine['id']}"), 200, "Agent")["state"] == "Ready"
    check(get(env, "/agents"), 200, "AgentList")
    assert httpx.post(env.run.mcp, json=call, headers=h).status_code == 200


def test_a_body_nested_100000_deep_is_a_400(env: Env) -> None:
    """Attack: an admin body nested 100,000 levels deep. ``json.loads`` raised RecursionError:
    a 500 with a traceback in the log. Now 400 bad_request; the agent stays as it was."""
    _key, h, call = _agent_session(env, "deep-user")
    agents = check(get(env, "/agents"), 200, "AgentList")["agents"]
    mine = next(a for a in agents if a["principal"] == "deep-user")
    headers = {**bearer(env.keys.admin), "Content-Type": "application/json"}
    deep = b'{"reason": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for path in (f"/agents/{mine['id']}/suspend", "/tools/everything__echo/approve"):
        refused = httpx.post(f"{env.run.base}/api{path}", content=deep, headers=headers)
        assert refused.status_code == 400, path
        jsonschema.validate(refused.json(), OPENAPI["components"]["schemas"]["Error"])
    assert check(get(env, f"/agents/{mine['id']}"), 200, "Agent")["state"] == "Ready"
    assert httpx.post(env.run.mcp, json=call, headers=h).status_code == 200


def test_closing_a_session_ends_its_agent_and_only_its_owner_can(env: Env) -> None:
    owner, _ = env.keys.store.create("closing-user", ("developer",))
    r = httpx.post(env.run.mcp, json=INIT_BODY, headers={**MCP, **bearer(owner)})
    sid = r.headers["mcp-session-id"]
    h = {**MCP, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    httpx.post(
        env.run.mcp,
        json={"jsonrpc": "2.0", "method": "notifications/initialized"},
        headers={**h, **bearer(owner)},
    )
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "hi"}},
    }
    assert httpx.post(env.run.mcp, json=call, headers={**h, **bearer(owner)}).status_code == 200

    def mine() -> list[dict[str, Any]]:
        return [
            a
            for a in check(get(env, "/agents"), 200, "AgentList")["agents"]
            if a["principal"] == "closing-user" and a["state"] != "Terminated"
        ]

    assert len(mine()) == 1
    # attack: another principal closes the session by its id: refused, the agent lives on
    assert httpx.delete(env.run.mcp, headers={**h, **bearer(env.keys.other_user)}).status_code == 404
    assert len(mine()) == 1
    assert httpx.delete(env.run.mcp, headers={**h, **bearer(owner)}).status_code in (200, 204)
    assert mine() == []


def test_an_audit_query_shows_what_was_emitted_before_it(env: Env) -> None:
    """Read your own writes: an operator's action, then a query for its event. The action's event
    is fire-and-forget (held on the server's loop until the next record or the linger's end);
    the query commits what was emitted before it, from its worker thread. The linger is made
    long here so that only that flush can show the event."""
    gw = env.run.state.gateway
    assert gw is not None and gw.audit is not None
    _agent_session(env, "query-own-writes")
    mine = next(
        a
        for a in check(get(env, "/agents"), 200, "AgentList")["agents"]
        if a["principal"] == "query-own-writes"
    )
    linger = gw.audit.EMIT_LINGER_S
    gw.audit.EMIT_LINGER_S = 60.0
    try:
        acted = httpx.post(
            f"{env.run.base}/api/agents/{mine['id']}/terminate",
            json={"reason": "done"},
            headers=bearer(env.keys.admin),
            timeout=10,
        )
        assert acted.status_code == 200
        events = check(get(env, "/audit/query?type=agent.terminate_requested"), 200, "AuditEvents")["events"]
    finally:
        gw.audit.EMIT_LINGER_S = linger
    assert [e["agent"] for e in events if e["agent"] == mine["id"]] == [mine["id"]]
