"""Priority through the whole gateway: at one dispatch slot (``runtime.max_in_flight = 1``),
a high-priority agent's call overtakes low-priority calls already queued, end to end.

Real parts: the HTTP front (uvicorn on 127.0.0.1, API keys), two SDK client sessions of two
principals, the real Rego engine deciding the ``priority`` condition, and a recording stdio
upstream (tests/peers/mutable_server.py) whose record file is the order calls reached it.
The slot is held by a long ``slow`` call that the test cancels once the others are queued,
so the order does not depend on timing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import ROOT, upstream_writable, write_config
from tests.server.http.conftest import run_server

pytestmark = pytest.mark.anyio

MUTABLE = ROOT / "tests/peers/mutable_server.py"

POLICY = """
package symbi
import rego.v1

default decision := {"allow": false, "reasons": ["not allowed"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if input.action == "list"

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    input.action == "call"
    input.principal.id != "vip"
}

decision := {"allow": true, "reasons": [], "conditions": {"priority": 9}} if {
    input.action == "call"
    input.principal.id == "vip"
}
"""


def _config(tmp_path: Path) -> tuple[Path, Path]:
    record = upstream_writable(tmp_path) / "record.jsonl"
    policy = tmp_path / "policy.rego"
    policy.write_text(POLICY)
    cfg = write_config(
        tmp_path,
        f"""
        [policy]
        path = "{policy}"

        [sandbox]
        code_tools = false

        [runtime]
        max_in_flight = 1
        aging_s = 3600.0

        [servers.rec]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        env = {{ RECORD_FILE = "{record}" }}
        verification = "warn"
        """,
    )
    return cfg, record


def _echoes(record: Path) -> list[str]:
    lines = [json.loads(x) for x in record.read_text().splitlines()] if record.exists() else []
    return [x["arguments"]["message"] for x in lines if x["tool"] == "echo"]


async def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        await anyio.sleep(0.02)


async def test_a_high_priority_call_overtakes_queued_low_priority_calls(tmp_path: Path) -> None:
    cfg, record = _config(tmp_path)
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    low_key, _ = store.create("worker", ("tester",))
    vip_key, _ = store.create("vip", ("tester",))
    with run_server(cfg) as srv:
        gw = srv.state.gateway
        assert gw is not None
        sched = gw.runtime.scheduler
        results: dict[str, Any] = {}
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {low_key}"}, timeout=60) as lc,
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {vip_key}"}, timeout=60) as vc,
            streamable_http_client(srv.mcp, http_client=lc) as (lr, lw),
            streamable_http_client(srv.mcp, http_client=vc) as (vr, vw),
            ClientSession(lr, lw) as low,
            ClientSession(vr, vw) as vip,
        ):
            await low.initialize()
            await vip.initialize()

            async def echo(s: ClientSession, message: str) -> None:
                results[message] = await s.call_tool("rec__echo", {"message": message})

            async with anyio.create_task_group() as tg:
                hold = anyio.CancelScope()

                async def slow() -> None:
                    with hold:
                        await low.call_tool("rec__slow", {"seconds": 120})

                tg.start_soon(slow)  # takes the only slot
                await _until(lambda: sched.in_flight == 1, "the slow call holds the slot")
                for i in range(3):  # queued one by one: FIFO order within their level is known
                    tg.start_soon(echo, low, f"low-{i}")
                    await _until(lambda n=i + 1: sched.queue_depth() == n, "low calls queued")
                tg.start_soon(echo, vip, "high")
                await _until(lambda: sched.queue_depth() == 4, "the high call queued")
                assert sched.queue_depth(9) == 1  # the others wait at the sessions' priority
                hold.cancel()  # the client cancels the slow call: the slot frees
        assert all(not r.is_error for r in results.values()), results
    assert _echoes(record) == ["high", "low-0", "low-1", "low-2"]
