"""An untrusted upstream MCP server (npm server-everything) run inside a sandbox tier by the gateway."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.conftest import EVERYTHING_JS, ROOT, require_peers, write_config
from tests.server._clients import stdio_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


@pytest.mark.parametrize("tier", ["bwrap", "gvisor"])
async def test_upstream_runs_inside_the_tier(tmp_path: Path, tier: str) -> None:
    require_peers()
    cfg = write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.everything]
        command = "/usr/bin/node"
        args = ["{EVERYTHING_JS}", "stdio"]
        cwd = "{ROOT}"   # bound read-only inside the sandbox (node_modules lives there)
        sandbox = "{tier}"
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        r = await s.call_tool("everything__get-env", {})
        assert not r.is_error, r
        env = json.loads(r.content[0].text)  # type: ignore[union-attr]
        # the sandbox's environment, not the gateway's: a fresh HOME, no host user
        assert env.get("HOME") == "/tmp"
        assert "USER" not in env and "SYMBI_CONFIG_PATH" not in env
        echo = await s.call_tool("everything__echo", {"message": f"from {tier}"})
        assert echo.content[0].text == f"Echo: from {tier}"  # type: ignore[union-attr]

    # The gateway is gone: nothing of its sandboxed server may stay behind (gVisor takes a moment).
    from gateway.config import build_config
    from gateway.sandbox import SandboxManager

    manager = SandboxManager(build_config({}), sweep_orphans=False)
    try:
        with anyio.fail_after(30):
            while manager.leftovers()[tier]:
                await anyio.sleep(0.2)
    finally:
        manager.close()
