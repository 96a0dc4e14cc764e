"""bench/runtime.py's hosted agent start per tier: a real ``symbi serve`` starts
examples/agents/clock_agent.py in the tier; from the audit log, registered -> Ready and
registered -> its first tool call. Baseline: the same interpreter importing the same SDK on the
host, no sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench._common import ROOT, SYMBI, VENV_BIN, everything_toml, free_port, median
from gateway.config import load_config

# the hosted agent imports the SDK from this venv's packages (read-only in the sandbox)
SITE = Path(sys.prefix) / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def _hosted_config(tier: str, folder: Path) -> Path:
    """``symbi serve``'s config for ``hosted_start``: examples/agents/clock_agent.py hosted in
    ``tier``, started on demand, never restarted."""
    d = folder / f"hosted-{tier}"
    d.mkdir()
    cfg = d / "symbi.toml"
    cfg.write_text(
        f"""
[gateway]
data_dir = "{d / "data"}"
log_level = "WARNING"
[policy]
path = "{ROOT / "policies.rego"}"
data = "{ROOT / "tests/assets/policy/test-data.json"}"
{everything_toml("warn")}[servers.time]
command = "{VENV_BIN / "mcp-server-time"}"
args = ["--local-timezone", "UTC"]
verification = "warn"
[agents.clock]
command = "/usr/bin/python3"
args = ["{ROOT / "examples/agents/clock_agent.py"}"]
env = {{ PYTHONPATH = "{SITE}" }}
read_only_paths = ["{SITE}"]
roles = ["tester"]
sandbox = "{tier}"
restart = "never"
start = "on-demand"
"""
    )
    return cfg


def _run_hosted(cfg: Path, runs: int, env: dict[str, str]) -> None:
    """``symbi serve`` with ``cfg``: runs the hosted agent ``runs`` times, one after the other
    (each until it is Terminated), then stops."""
    from gateway.server.auth import ApiKeyStore

    admin, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("ops", ("admin",))
    port = free_port()
    log = open(cfg.parent / "serve.log", "w")
    proc = subprocess.Popen(
        [str(SYMBI), "serve", "--config", str(cfg), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    hdr = {"Authorization": f"Bearer {admin}"}
    try:
        _wait(lambda: httpx.get(base + "/readyz", timeout=2).status_code == 200, 90)
        for _ in range(runs):
            r = httpx.post(base + "/api/agents/clock/run", headers=hdr, timeout=10)
            assert r.status_code == 200, r.text
            _wait(lambda: _hosted_state(base, hdr) == "Terminated", 120)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _start_times(events: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """From the audit log, per hosted agent run: registered -> Ready and registered -> its
    first tool call (ms)."""
    to_ready, to_call = [], []
    for ev in events:
        if ev["type"] == "agent.registered" and ev["details"].get("hosted"):
            aid, t0 = ev["agent"], ev["ts_ns"]
            ready = next(
                e["ts_ns"]
                for e in events
                if e["type"] == "agent.state" and e["agent"] == aid and e["details"]["to"] == "Ready"
            )
            first = min(
                e["details"]["started_ns"] for e in events if e["type"] == "tool.call" and e["agent"] == aid
            )
            to_ready.append((ready - t0) / 1e6)
            to_call.append((first - t0) / 1e6)
    return to_ready, to_call


def hosted_start(tier: str, runs: int, folder: Path) -> dict[str, Any]:
    cfg = _hosted_config(tier, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    _run_hosted(cfg, runs, env)
    q = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    to_ready, to_call = _start_times([json.loads(x) for x in q.stdout.splitlines()])
    return {
        "runs": len(to_ready),
        "registered_to_ready_ms": _ms(to_ready),
        "registered_to_first_tool_call_ms": _ms(to_call),
    }


def host_baseline(runs: int) -> dict[str, Any]:
    """The same interpreter importing the same SDK on the host (no sandbox, no connection)."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(
            ["/usr/bin/python3", "-c", "import anyio, httpx2, mcp.client.streamable_http"],
            env={"PYTHONPATH": str(SITE)},
            check=True,
        )
        times.append((time.perf_counter() - t) * 1000)
    return {"runs": runs, "start_and_import_sdk_ms": _ms(times)}


def _ms(v: list[float]) -> dict[str, float]:
    return {"median": round(median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1)} if v else {}


def _hosted_state(base: str, hdr: dict[str, str]) -> str | None:
    agents = httpx.get(base + "/api/agents", headers=hdr, timeout=5).json()["agents"]
    hosted = [a for a in agents if a["hosted"]]
    return hosted[-1]["state"] if hosted else None


def _wait(cond: Callable[[], bool], timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > end:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.05)
