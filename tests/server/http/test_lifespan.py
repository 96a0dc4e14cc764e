"""A gateway whose lifespan died must not look alive: uvicorn keeps serving HTTP after its
lifespan failed, so /healthz (the balancer's check, the liveness probe) turns 503 and the
process gets restarted instead of lingering with no background tasks and no audit writer.

The failure is injected at one seam: the revoked-key sweep, replaced by a task that raises
(the real ones that did -- a PostgreSQL outage in that sweep or in a hosted agent's key
revocation -- are fixed and tested in tests/state).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.server.http.conftest import everything_config, run_server


def test_a_dead_lifespan_makes_healthz_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def crashing_sweep(*_args: object) -> None:
        await anyio.sleep(0.5)
        raise RuntimeError("a background task failed")

    monkeypatch.setattr("gateway.server.http.sweep_revoked", crashing_sweep)
    with run_server(everything_config(tmp_path), wait_ready=False) as run:
        deadline = time.monotonic() + 60  # the bound of the wait, not a timing assertion
        r = httpx.get(run.base + "/healthz", timeout=5)
        while r.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            r = httpx.get(run.base + "/healthz", timeout=5)
        assert r.status_code == 503 and r.json() == {
            "status": "stopped",
            "reason": "the gateway stopped: RuntimeError",
        }
        ready = httpx.get(run.base + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["ready"] is False
