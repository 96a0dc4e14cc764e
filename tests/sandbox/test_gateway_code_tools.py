"""Code tools end to end: an MCP client → ``symbi mcp`` → policy picks gVisor → the result
comes back, and the audit record names the tier."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SYMBI, symbi_env, write_config
from tests.server._clients import stdio_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


async def test_run_python_through_the_gateway_runs_in_gvisor(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = true\n")
    async with stdio_session(cfg) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert {"sandbox__run_python", "sandbox__run_shell"} <= set(tools)
        assert tools["sandbox__run_python"].input_schema["required"] == ["code"]
        r = await s.call_tool("sandbox__run_python", {"code": "import os; print('hi', os.getuid())"})
        assert not r.is_error, r
        assert r.structured_content["tier"] == "gvisor"
        assert r.structured_content["stdout"].startswith("hi ")
        assert r.structured_content["stdout"].strip() != "hi 0"  # never root inside  # type: ignore[index]

        net = await s.call_tool(
            "sandbox__run_python",
            {"code": "import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)"},
        )
        assert net.is_error  # no network in the sandbox

    q = subprocess.run(
        [
            str(SYMBI),
            "audit",
            "query",
            "--config",
            str(cfg),
            "--tool",
            "sandbox__run_python",
            "--type",
            "tool.call",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    events = [json.loads(line) for line in q.stdout.splitlines()]
    assert events and all(e["details"]["sandbox_tier"] == "gvisor" for e in events)
    assert events[0]["details"]["decision"]["conditions"]["sandbox_tier"] == "gvisor"
