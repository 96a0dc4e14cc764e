"""Status and agent control as a user sees them: ``symbi agents``/``symbi status`` against a
real ``symbi serve``, the admin-only ``symbi://status`` resource, and ``/metrics``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import SYMBI, peers_config, symbi_env
from tests.server._http import serve


def symbi(cfg: Path, base: str, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SYMBI), *args, "--config", str(cfg), "--url", base],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(SYMBI_API_KEY=key),
    )


async def _status_resource(mcp: str, key: str) -> Any:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as hc,
        streamable_http_client(mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        uris = [str(x.uri) for x in (await s.list_resources()).resources]
        if "symbi://status" not in uris:
            with pytest.raises(MCPError):
                await s.read_resource("symbi://status")
            return None
        await s.call_tool("everything__echo", {"message": "hi"})
        got = await s.read_resource("symbi://status")
        return json.loads(got.contents[0].text)  # type: ignore[union-attr]


def _open_session(mcp: str, key: str) -> None:
    """An HTTP session left open (its agent lives as long as the session: a closed one ends it)."""
    h = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {key}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "ops-console", "version": "1"},
        },
    }
    r = httpx.post(mcp, json=init, headers=h, timeout=30)
    assert r.status_code == 200, r.text
    h = {**h, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    assert (
        httpx.post(
            mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, timeout=30
        ).status_code
        == 202
    )
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "ops"}},
    }
    assert httpx.post(mcp, json=call, headers=h, timeout=30).status_code == 200  # the agent is made here


def test_cli_status_resource_and_metrics(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    admin, _ = store.create("ops", ("admin", "tester"))
    user, _ = store.create("tester", ("tester",))
    with serve(cfg) as base:
        status = anyio.run(_status_resource, base + "/mcp", admin)
        assert status["overall_status"] == "healthy"
        assert set(status) >= {"overall_status", "component_health", "resource_utilization", "recent_errors"}
        assert anyio.run(_status_resource, base + "/mcp", user) is None  # not listed, and refused

        _open_session(base + "/mcp", admin)
        listed = symbi(cfg, base, admin, "agents", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        agents = json.loads(listed.stdout)
        ops = next(a for a in agents if a["principal"] == "ops")
        shown = symbi(cfg, base, admin, "agents", "show", ops["id"], "--json")
        assert json.loads(shown.stdout)["id"] == ops["id"]
        sus = symbi(cfg, base, admin, "agents", "suspend", ops["id"], "--reason", "cli test", "--json")
        assert sus.returncode == 0 and json.loads(sus.stdout)["result"] in ("pending", "suspended")
        held = json.loads(symbi(cfg, base, admin, "agents", "suspended", "--json").stdout)
        assert [h["principal"] for h in held] == ["key:ops"]  # a session agent's is its principal's
        res = symbi(cfg, base, admin, "agents", "resume", ops["id"])
        assert res.returncode == 0 and "Ready" in res.stdout
        assert symbi(cfg, base, admin, "agents", "suspended").stdout.strip() == "no suspended principal"
        again = symbi(cfg, base, admin, "agents", "resume", ops["id"])
        assert again.returncode == 1 and "invalid_transition" in again.stderr
        by_principal = symbi(cfg, base, admin, "agents", "suspend", "--principal", "key:ops", "--reason", "x")
        assert by_principal.returncode == 0 and "key:ops: suspended" in by_principal.stdout
        cleared = symbi(cfg, base, admin, "agents", "resume", "--principal", "key:ops")
        assert cleared.returncode == 0 and "key:ops: resumed" in cleared.stdout
        assert symbi(cfg, base, admin, "agents", "resume", "--principal", "key:ops").returncode == 1  # 404
        assert symbi(cfg, base, admin, "agents", "resume").returncode == 2  # neither named
        assert symbi(cfg, base, admin, "agents", "show", "agt-nope").returncode == 1
        forbidden = symbi(cfg, base, user, "agents", "list")
        assert forbidden.returncode == 1 and "403" in forbidden.stderr
        no_key = subprocess.run(
            [str(SYMBI), "agents", "list", "--config", str(cfg), "--url", base],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=symbi_env(),
        )
        assert no_key.returncode == 2 and "SYMBI_API_KEY" in no_key.stderr

        st = symbi(cfg, base, admin, "status", "--json")
        assert st.returncode == 0 and json.loads(st.stdout)["overall_status"] == "healthy"
        text = symbi(cfg, base, admin, "status")
        assert text.stdout.startswith("overall: healthy") and "upstream:fs" in text.stdout
        hosted = symbi(cfg, base, admin, "agents", "status", "--json")  # no [agents.*] here
        assert hosted.returncode == 0 and json.loads(hosted.stdout)["agents"] == {}
        assert symbi(cfg, base, admin, "agents", "status").stdout.strip() == "no hosted agents"

        ready = httpx.get(base + "/readyz").json()
        assert ready["ready"] is True and ready["components"]["scheduler"] == "healthy"
        metrics = httpx.get(base + "/metrics").text
        assert 'symbi_agents{state="Ready"}' in metrics
        assert 'symbi_agent_task_transitions_total{edge="task assigned"}' in metrics
        assert 'symbi_scheduler_queue_depth{priority="4"} 0.0' in metrics
        assert "symbi_scheduler_admitted_total" in metrics
