"""The runtime in the real call chain: ``symbi mcp`` (stdio) with a recording upstream.

A suspended agent's calls get ``agent_suspended`` and never reach the upstream: the upstream
(tests/peers/mutable_server.py) appends every call it receives to a file, which is the proof.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, SYMBI, symbi_env, upstream_writable, write_config
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

MUTABLE = ROOT / "tests/peers/mutable_server.py"

POLICY = """
package symbi
import rego.v1

default decision := {"allow": false, "reasons": ["not allowed"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if input.action == "list"

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    input.action == "call"
    not input.arguments.message in {"forbidden", "evil"}
}

decision := {"allow": true, "reasons": [], "conditions": {"suspend_agent": "asked for evil"}} if {
    input.action == "call"
    input.arguments.message == "evil"
}
"""


def _config(tmp_path: Path, runtime: str = "") -> tuple[Path, Path]:
    record = (
        upstream_writable(tmp_path) / "record.jsonl"
    )  # the upstream runs as the unprivileged upstream user
    policy = tmp_path / "policy.rego"
    policy.write_text(POLICY)
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{policy}"

        [runtime]
        {runtime}

        [servers.rec]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        """,
    )
    return cfg, record


def _received(record: Path) -> list[str]:
    if not record.exists():
        return []
    return [json.loads(line)["arguments"].get("message") for line in record.read_text().splitlines()]


def _code(result: Any) -> str | None:
    return (result.meta or {}).get("symbi/error", {}).get("code") if result.is_error else None


def _events(cfg: Path, event_type: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--type", event_type, "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_denials_suspend_the_agent_and_its_calls_never_reach_the_upstream(tmp_path: Path) -> None:
    cfg, record = _config(tmp_path, "suspend_after_denials = 2")
    async with stdio_session(cfg) as s:
        assert _code(await s.call_tool("rec__echo", {"message": "first"})) is None
        assert _code(await s.call_tool("rec__echo", {"message": "forbidden"})) == "policy_denied"
        assert _code(await s.call_tool("rec__echo", {"message": "forbidden"})) == "policy_denied"
        assert _code(await s.call_tool("rec__echo", {"message": "after"})) == "agent_suspended"
    assert _received(record) == ["first"]
    states = [(e["details"]["from"], e["details"]["to"]) for e in _events(cfg, "agent.state")]
    assert states[0] == ("Initializing", "Ready") and states[-1] == ("Running", "Suspended")
    calls = _events(cfg, "tool.call")
    agents = {e["agent"] for e in calls}
    assert len(agents) == 1 and None not in agents  # every call carries the session's agent
    assert calls[-1]["details"]["error_code"] == "agent_suspended"


async def test_suspend_agent_condition_suspends_and_refuses(tmp_path: Path) -> None:
    cfg, record = _config(tmp_path)
    async with stdio_session(cfg) as s:
        assert _code(await s.call_tool("rec__echo", {"message": "evil"})) == "agent_suspended"
        assert _code(await s.call_tool("rec__echo", {"message": "harmless"})) == "agent_suspended"
    assert _received(record) == []
    [suspended] = [e for e in _events(cfg, "agent.state") if e["details"]["to"] == "Suspended"]
    assert "asked for evil" in suspended["details"]["reason"]


async def test_execution_budget_breach_suspends(tmp_path: Path) -> None:
    cfg, record = _config(tmp_path, "[runtime.resources]\nexecution_timeout_s = 0.3")
    async with stdio_session(cfg) as s:
        assert _code(await s.call_tool("rec__slow", {"seconds": 3})) == "budget_exceeded"
        assert _code(await s.call_tool("rec__echo", {"message": "next"})) == "agent_suspended"
    assert "next" not in _received(record)


@pytest.mark.sandbox
async def test_an_agents_memory_budget_caps_its_sandbox_runs(tmp_path: Path) -> None:
    """The sandbox allows 256 MB; the agent's budget is 48 MB: its code tool run is held to 48."""
    body = "[sandbox]\ncode_tools = true\nmemory_mb = 256\n[runtime.resources]\nmemory_mb = 48\n"
    cfg = write_config(tmp_path, body)
    hog = "b = bytearray(120 * 1024 * 1024); print('allocated')"
    async with stdio_session(cfg) as s:
        r = await s.call_tool("sandbox__run_python", {"code": hog})
    assert r.is_error and r.structured_content is not None
    assert r.structured_content["killed"] == "memory" or "MemoryError" in r.structured_content["stderr"]
    assert "allocated" not in r.structured_content["stdout"]
    # control: with a budget above the sandbox's own limit the same program runs
    roomy = write_config(
        tmp_path,
        body.replace("memory_mb = 48", "memory_mb = 1024") + f'[gateway]\ndata_dir = "{tmp_path / "d2"}"\n',
        name="roomy.toml",
    )
    async with stdio_session(roomy) as s:
        ok = await s.call_tool("sandbox__run_python", {"code": hog})
    assert not ok.is_error and "allocated" in ok.structured_content["stdout"]
