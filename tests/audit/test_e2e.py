"""End to end: calls through ``symbi mcp`` (real SDK client, real upstream) land in the audit
log as expected, verifiable, with policy-redacted argument values absent from the store."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from tests.conftest import ROOT, write_config
from tests.server._clients import stdio_session

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MUTABLE = ROOT / "tests/peers/mutable_server.py"
SECRET = "tok-E2E-9f8e7d6c5b4a"


async def test_calls_through_symbi_mcp_are_audited_without_secrets(tmp_path: Path) -> None:
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
        ok = await s.call_tool("mut__read_path", {"path": "/tmp/x.txt", "api_token": SECRET})
        assert not ok.is_error
        denied = await s.call_tool("mut__read_path", {"path": "/etc/shadow", "api_token": SECRET})
        assert denied.is_error  # outside the policy's fs_roots

    db = tmp_path / "data" / "audit.db"
    conn = sqlite3.connect(db)
    rows = [
        json.loads(d)
        for (d,) in conn.execute(
            "SELECT details FROM events WHERE type = 'tool.call' AND json_extract(details, '$.tool') = 'mut__read_path' "
            "ORDER BY seq"
        )
    ]
    everything = " ".join(d for (d,) in conn.execute("SELECT details FROM events"))
    conn.close()
    assert [(r["outcome"], r["decision"]["allow"]) for r in rows] == [("ok", True), ("denied", False)]
    assert rows[0]["upstream"] == "mut" and rows[0]["arguments"]["path"] == "/tmp/x.txt"
    assert "api_token" in rows[0]["arguments"] and rows[0]["arguments"]["api_token"] != SECRET
    assert SECRET not in everything

    res = await anyio.run_process(
        [sys.executable, "-m", "gateway", "audit", "verify", "--config", str(cfg)], cwd=ROOT, check=False
    )
    assert res.returncode == 0, res.stdout + res.stderr
    deny = await anyio.run_process(
        [
            sys.executable,
            "-m",
            "gateway",
            "audit",
            "query",
            "--config",
            str(cfg),
            "--decision",
            "deny",
            "--tool",
            "mut__read_path",
            "--json",
        ],
        cwd=ROOT,
        check=False,
    )
    [denied_event] = [json.loads(line) for line in deny.stdout.decode().splitlines()]
    # a denied call carries no policy-redacted arguments: only the names are recorded
    assert set(denied_event["details"]["arguments"]) == {"path", "api_token"}
    assert denied_event["details"]["outcome"] == "denied" and SECRET not in json.dumps(denied_event)
