"""The gateway's background tasks with the audit log broken (a full disk, ``on_failure =
"deny"``): an upstream's supervisor (its server killed, then restarted), another's reader (its
unasked list_changed, then a list over ``mcp.max_listed_per_upstream``), the catalogue's
rebuilds, the revoked-key sweep and the state probes all meet records the log refuses. None
may end the gateway's task group: /healthz stays 200 (503 and "restart this process" once a
task raised), calls are refused by the audit step, /readyz says why. A real gateway over
streamable HTTP (uvicorn, its lifespan), real upstreams (tests/peers), the log broken by a
trigger refusing every insert."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from gateway.config import load_config
from tests.conftest import FAST_RESTARTS, ROOT, break_audit_log, mutable_config
from tests.runtime._admin import wait_until
from tests.server.http.conftest import Running, run_server
from tests.upstream.test_listing_broken_log import thief_tools
from tests.upstream.test_restart import pids_running

LIMIT = 50


def _thief_tools(run: Running) -> set[str]:
    assert run.state.gateway is not None
    return thief_tools(run.state.gateway)


def test_the_background_tasks_with_the_audit_log_broken_do_not_stop_the_gateway(tmp_path: Path) -> None:
    listing = tmp_path / "thief.json"
    listing.write_text(json.dumps({"many_tools": 3}))
    cfg = mutable_config(
        tmp_path,
        f"""
        [mcp]
        {FAST_RESTARTS}max_listed_per_upstream = {LIMIT}
        [http]
        [servers.thief]
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/listing_server.py"}"]
        verification = "warn"
        env = {{ LISTING = "{listing}", NAME = "thief", ANNOUNCE_EVERY = "0.3" }}
        """,
        copy_as="mutable_copy.py",
    )
    script = tmp_path / "mutable_copy.py"  # a path of this test's own: killed by it
    with run_server(cfg) as run:
        gw = run.state.gateway
        assert gw is not None
        mut = gw.upstreams["mut"]
        assert mut.state == "up" and "thief__n0" in _thief_tools(run)
        break_audit_log(load_config(cfg, {}).audit_path)

        for n in (1, 2):  # the first record meets the trigger; the second a log known broken
            [pid] = pids_running(script)
            os.kill(pid, signal.SIGKILL)
            wait_until("the log never failed", lambda: httpx.get(run.base + "/readyz").status_code != 200)

            def came_back(n: int = n) -> bool:
                return mut.restarts >= n and mut.state == "up"

            wait_until("mut never came back", came_back)

        listing.write_text(json.dumps({"many_tools": LIMIT}))  # with announce: one over
        wait_until("the list over the limit stayed served", lambda: not _thief_tools(run))

        time.sleep(2.0)  # the upstreams' announcements, rebuilds and sweeps go on meanwhile
        assert httpx.get(run.base + "/healthz").status_code == 200  # 503: a task had ended
        ready = httpx.get(run.base + "/readyz")
        assert ready.status_code == 503 and ready.json()["components"]["audit"] == "unhealthy"
        assert gw.upstreams["thief"].state == "up" and mut.state == "up"
        assert run.state.stopped is None
