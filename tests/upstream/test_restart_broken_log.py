"""An upstream that dies with the audit log broken (a full disk, ``on_failure = "deny"``):
its ``upstream.down`` record raised out of the supervisor (outside its try), which ended the
gateway's task group: the gateway stopped. Now the record is refused, logged, and the
upstream is restarted; the gateway stays up. A real gateway, the log closed as a broken disk
would leave it, the upstream killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from gateway.assemble import make_gateway
from gateway.config import load_config
from tests.conftest import FAST_RESTARTS, mutable_config
from tests.upstream.test_restart import pids_running

pytestmark = pytest.mark.anyio


async def test_an_upstream_killed_with_the_audit_log_broken_comes_back(tmp_path: Path) -> None:
    cfg = mutable_config(tmp_path, f"[mcp]\n{FAST_RESTARTS}", copy_as="mutable_copy.py")
    script = tmp_path / "mutable_copy.py"  # a path of this test's own: killed by it
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        up = gw.upstreams["mut"]
        assert up.state == "up" and "mut__echo" in gw.catalog.tools
        assert gw.audit is not None
        gw.audit.close()  # every record refused from now on
        [pid] = pids_running(script)
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(15):  # down, then restarted (a task ended by a record: cancelled here)
            while not (up.restarts >= 1 and up.state == "up"):
                await anyio.sleep(0.05)
        new = pids_running(script)
        assert new and pid not in new
        with anyio.fail_after(15):  # its catalogue rebuild, with the log broken, ends nothing either
            while "mut__echo" not in gw.catalog.tools:
                await anyio.sleep(0.05)
