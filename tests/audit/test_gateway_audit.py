"""Audit end to end: calls through ``symbi mcp`` produce signed, chained events in the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, SYMBI, symbi_env, write_config
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio
MUTABLE = ROOT / "tests/peers/mutable_server.py"


def symbi(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SYMBI), *args], capture_output=True, text=True, timeout=60, env=symbi_env())


async def test_calls_produce_verifiable_events_without_redacted_values(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        f"""
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        ok = await s.call_tool("mut__read_path", {"path": "/tmp/x", "api_token": "tok-SECRET-4711"})
        assert not ok.is_error
        denied = await s.call_tool("mut__read_path", {"path": "/etc/../etc/shadow"})
        assert denied.is_error
        unknown = await s.call_tool("ghost__tool", {})
        assert unknown.is_error

    verify = symbi("audit", "verify", "--config", str(cfg))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    q = symbi(
        "audit", "query", "--config", str(cfg), "--tool", "mut__read_path", "--type", "tool.call", "--json"
    )
    assert q.returncode == 0, q.stderr
    events = [json.loads(line) for line in q.stdout.splitlines()]
    outcomes = sorted(e["details"]["outcome"] for e in events)
    assert outcomes == ["denied", "ok"]
    allowed = next(e for e in events if e["details"]["outcome"] == "ok")
    assert allowed["principal"] == "local"
    assert allowed["details"]["arguments"]["api_token"] == "[REDACTED]"
    assert allowed["details"]["upstream"] == "mut"
    assert allowed["details"]["unverified_warning"] is True
    refused = next(e for e in events if e["details"]["outcome"] == "denied")
    assert refused["details"]["decision"]["allow"] is False and refused["details"]["decision"]["reasons"]

    # the raw secret is nowhere in the log files
    for f in (tmp_path / "data").glob("audit*"):
        assert b"tok-SECRET-4711" not in f.read_bytes()

    types = {
        json.loads(line)["type"]
        for line in symbi("audit", "query", "--config", str(cfg), "--json").stdout.splitlines()
    }
    assert {"gateway.start", "config.loaded", "upstream.up", "tool.call", "gateway.stop"} <= types


async def test_audit_recent_resource_is_for_admins_only(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    def cfg(principal: str, roles: str) -> Path:
        return write_config(
            tmp_path,
            f"""
            [gateway]
            data_dir = "{tmp_path / principal}"
            [gateway.stdio_principal]
            id = "{principal}"
            roles = {roles}
            """,
            name=f"{principal}.toml",
        )

    async with stdio_session(cfg("boss", '["admin"]')) as s:
        assert "audit://recent" in [r.uri for r in (await s.list_resources()).resources]
        got = await s.read_resource("audit://recent")
        events = json.loads(got.contents[0].text)  # type: ignore[union-attr]
        assert any(e["type"] == "gateway.start" for e in events)
    async with stdio_session(cfg("dev", '["developer"]')) as s:
        assert "audit://recent" not in [r.uri for r in (await s.list_resources()).resources]
        with pytest.raises(MCPError):
            await s.read_resource("audit://recent")
