"""A circuit breaker that opens with the audit log broken (a full disk, ``on_failure =
"deny"``). Its ``upstream.breaker`` record is on a call's path only (the schedule step, inside
the audit step), never a background task's: refused, it fails that call (``AuditError``, as
the call's own record would) and the breaker stays open; the gateway runs on and the upstream
is restarted. A real gateway, a real upstream killed mid-call, the log closed as a broken disk
would leave it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.context import CallContext, Principal
from gateway.errors import AuditError
from tests.conftest import FAST_RESTARTS, mutable_config
from tests.upstream.test_restart import pids_running

pytestmark = pytest.mark.anyio

TESTER = Principal(id="tester", roles=("tester",), source="key")


async def test_a_breaker_opened_with_the_log_broken_fails_its_call_not_the_gateway(tmp_path: Path) -> None:
    before = f"[mcp]\n{FAST_RESTARTS}[runtime.breaker]\nfailures = 1\n"
    cfg = mutable_config(tmp_path, before, copy_as="mutable_copy.py")
    script = tmp_path / "mutable_copy.py"  # a path of this test's own: killed by it
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        up = gw.upstreams["mut"]
        outcome: list[Any] = []

        async def slow_call() -> None:
            call = CallContext(
                principal=TESTER, kind="tools/call", target="mut__slow", arguments={"seconds": 5}
            )
            try:
                outcome.append(await gw.call(call))
            except Exception as e:  # noqa: BLE001 - what the boundary turns into an error result
                outcome.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow_call)
            await anyio.sleep(1.0)  # the call is at the upstream, past the audit step's check
            assert gw.audit is not None
            gw.audit.close()  # every record refused from now on
            [pid] = pids_running(script)
            os.kill(pid, signal.SIGKILL)  # the call fails: the breaker opens, its record refused
        [error] = outcome
        assert isinstance(error, AuditError)
        assert gw.runtime.breakers.states() == {"mut": "open"}
        with anyio.fail_after(15):  # the supervisor restarts it: nothing ended
            while not (up.restarts >= 1 and up.state == "up"):
                await anyio.sleep(0.05)
