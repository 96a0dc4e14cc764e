"""An upstream that dies is restarted with backoff; the others keep working meanwhile."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from tests.conftest import EVERYTHING_JS, FAST_RESTARTS, mutable_config, require_peers
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio


def pids_running(script: Path) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(script).encode() in cmd:
            out.append(int(d.name))
    return out


async def test_killed_upstream_comes_back_and_others_keep_working(tmp_path: Path) -> None:
    require_peers()
    cfg = mutable_config(
        tmp_path,
        f"""
        [mcp]
        {FAST_RESTARTS}
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
        copy_as="mutable_copy.py",  # a path of this test's own: killed by it (pids_running)
    )
    script = tmp_path / "mutable_copy.py"
    async with stdio_session(cfg) as s:
        assert not (await s.call_tool("mut__echo", {"message": "before"})).is_error
        [pid] = pids_running(script)
        os.kill(pid, signal.SIGKILL)

        # While it is down: its calls fail with a clear error, the other upstream still works.
        saw_down = False
        with anyio.fail_after(15):
            while True:
                r = await s.call_tool("mut__echo", {"message": "during"})
                if r.is_error:
                    saw_down = True
                    assert r.meta["symbi/error"]["code"] in {"unknown_tool", "upstream_unavailable"}  # type: ignore[index]
                    assert not (await s.call_tool("everything__echo", {"message": "x"})).is_error
                elif saw_down:
                    break
                await anyio.sleep(0.05)
        new = pids_running(script)
        assert new and pid not in new
        names = {t.name for t in (await s.list_tools()).tools}
        assert "mut__echo" in names and "everything__echo" in names
        ok = await s.call_tool("mut__echo", {"message": "after"})
        assert ok.content[0].text == "Echo: after"  # type: ignore[union-attr]
