"""An untrusted upstream MCP server (npm server-everything) run inside a sandbox tier by the gateway."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import anyio
import pytest
from mcp.client import stdio as sdk_stdio

from gateway.sandbox import cgroups
from gateway.sandbox.docker_api import RUNSC_STATE_ROOT, docker_client
from gateway.sandbox.types import LABEL_OWNER
from tests.conftest import EVERYTHING_JS, NODE_MODULES, ROOT, require_peers, write_config
from tests.server._clients import stdio_session
from tests.upstream.test_runas import THIEF

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


def _gateway_pid(cfg: Path) -> int:
    """The ``symbi mcp`` process the session started (a child of this test process)."""
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(cfg).encode() in argv:
                return int(pid)
    raise AssertionError(f"no gateway process with --config {cfg} among this process's children")


def _of_gateway(tier: str, pid: int) -> set[str]:
    """What the gateway ``pid`` made in ``tier``: its cgroups, or its containers and their
    runsc state. Only that gateway's: another pytest-xdist worker's (or another session's)
    killed gateway may leave an orphan of its own for a while, which is not this test's."""
    if tier == "bwrap":
        return {p.name for p in cgroups.list_all() if p.name.startswith(f"symbi-{pid}-")}
    owner = f"{socket.gethostname()}:{pid}"
    cs = docker_client().containers.list(
        all=True, filters={"label": f"{LABEL_OWNER}={owner}"}, ignore_removed=True
    )
    return {c.id for c in cs}


def _runsc_state_left(ids: set[str]) -> set[str]:
    """Those of the containers ``ids`` whose runsc state (``<id>_sandbox:<id>.state``) is left."""
    root = Path(RUNSC_STATE_ROOT)
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return {i for i in ids if any(n.startswith(i) for n in names)}


@pytest.mark.parametrize("tier", ["bwrap", "gvisor"])
async def test_upstream_runs_inside_the_tier(
    tmp_path: Path, tier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_peers()
    # The SDK client gives the server 2 s to exit after stdin closes, then SIGTERMs and SIGKILLs
    # it: on a loaded machine that can kill the gateway mid-cleanup. This test checks what the
    # gateway's own clean exit leaves (a killed one's orphans are swept at the next start:
    # tests/sandbox/test_cleanup.py), so let it finish.
    monkeypatch.setattr(sdk_stdio, "PROCESS_TERMINATION_TIMEOUT", 60.0)
    cfg = write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.everything]
        command = "/usr/bin/node"
        args = ["{EVERYTHING_JS.resolve()}", "stdio"]
        cwd = "{NODE_MODULES.resolve().parent}"   # bound read-only inside the sandbox (node_modules lives there)
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
        pid = _gateway_pid(cfg)
        made = _of_gateway(tier, pid)
        assert made, f"the {tier} server's sandbox of gateway {pid} was not found"

    # The gateway is gone: nothing of its sandboxed server may stay behind (gVisor takes a moment).
    deadline = anyio.current_time() + 60
    while left := _of_gateway(tier, pid) | (_runsc_state_left(made) if tier == "gvisor" else set()):
        assert anyio.current_time() < deadline, f"left behind by gateway {pid}: {sorted(left)}"
        await anyio.sleep(0.2)


@pytest.mark.parametrize("tier", ["bwrap", "gvisor"])
async def test_a_sandboxed_upstreams_secrets_are_in_no_command_line(tmp_path: Path, tier: str) -> None:
    """Attack: an unsandboxed upstream (the thief, as ``symbi-upstream``, in its Landlock
    domain) reads every process's ``/proc/PID/cmdline``, which any user may read, looking for
    the token configured for a sandboxed upstream (``servers.victim.env``). The tiers put it
    there (bwrap's ``--setenv K V``, ``docker run -e K=V``) for the server's whole life; now
    the value travels in the launcher's environment (root's: unreadable) or a descriptor."""
    require_peers()
    if os.geteuid() != 0:
        pytest.skip("the unsandboxed thief runs as symbi-upstream: a root gateway")
    token = f"victim-token-{os.urandom(8).hex()}"
    cfg = write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.victim]
        command = "/usr/bin/node"
        args = ["{EVERYTHING_JS.resolve()}", "stdio"]
        cwd = "{NODE_MODULES.resolve().parent}"  # node_modules bound (a worktree links it)
        sandbox = "{tier}"
        verification = "warn"
        env = {{ API_TOKEN = "{token}" }}
        [servers.thief]
        command = "{sys.executable}"
        args = ["{THIEF}"]
        verification = "warn"
        env = {{ PYTHONPATH = "{ROOT}" }}
        """,
    )
    async with stdio_session(cfg) as s:
        env = json.loads((await s.call_tool("victim__get-env", {})).content[0].text)  # type: ignore[union-attr]
        assert env.get("API_TOKEN") == token  # the victim still has its token
        r = await s.call_tool("thief__command_lines", {"needle": token})
        assert not r.is_error, r
        report = json.loads(r.content[0].text)  # type: ignore[union-attr]
    assert report["scanned"] > 0
    assert report["found"] == [], report["found"]
