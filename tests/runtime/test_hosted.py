"""Hosted agents in real sandboxes (bwrap, gVisor and Docker), under a real ``symbi serve``.

The agent is examples/agents/clock_agent.py (an SDK MCP client). It runs the example, is
OOM-killed at its memory budget (then restarted with backoff, then escalated to Failed),
cannot reach a TCP service on the host's loopback, and its credential stops working when
its run ends.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import (
    EVERYTHING_JS,
    ROOT,
    SYMBI,
    TIME_BIN,
    free_port,
    require_peers,
    symbi_env,
    write_config,
)
from tests.server._http import serve

pytestmark = pytest.mark.slow
SITE = Path(sys.prefix) / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
AGENT = ROOT / "examples/agents/clock_agent.py"
TIERS = ["bwrap", "gvisor", "docker"]


def _config(tmp_path: Path, tier: str, agent: str) -> tuple[Path, str]:
    require_peers()
    cfg = write_config(
        tmp_path,
        f"""
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"

        [servers.time]
        command = "{TIME_BIN}"
        args = ["--local-timezone", "UTC"]
        verification = "warn"

        [agents.clock]
        command = "/usr/bin/python3"
        args = ["{AGENT}"]
        read_only_paths = ["{SITE.resolve()}"]
        roles = ["tester"]
        sandbox = "{tier}"
        {agent}
        """,
    )
    admin, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("ops", ("admin",))
    return cfg, admin


def _env(extra: str = "") -> str:
    return f'env = {{ PYTHONPATH = "{SITE.resolve()}"{extra} }}'


def _wait(
    base: str, admin: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 90
) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        agents = httpx.get(base + "/api/agents", headers={"Authorization": f"Bearer {admin}"}).json()[
            "agents"
        ]
        hosted = [a for a in agents if a["hosted"]]
        if done(hosted):
            return hosted
        assert time.monotonic() < deadline, f"hosted agent did not get there: {hosted}"
        time.sleep(0.2)


def _events(cfg: Path, *types: str) -> list[dict[str, Any]]:
    q = subprocess.run(
        [str(SYMBI), "audit", "query", "--config", str(cfg), "--type", ",".join(types), "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    return [json.loads(x) for x in q.stdout.splitlines()]


def _log(cfg: Path) -> list[dict[str, Any]]:
    text = (load_config(cfg, {}).data_dir / "agents/clock.log").read_text()
    return [json.loads(x) for x in text.splitlines() if x.startswith("{")]


@pytest.mark.parametrize("tier", TIERS)
def test_hosted_agent_runs_the_example_through_the_gateway(tmp_path: Path, tier: str) -> None:
    cfg, admin = _config(tmp_path, tier, _env() + '\nrestart = "never"')
    with serve(cfg) as base:
        [run] = _wait(base, admin, lambda h: bool(h) and h[0]["state"] == "Terminated")
        assert run["reason"] == "shutdown: run ended" and run["principal"] == "agent:clock"
    [out] = _log(cfg)
    assert out["time_error"] is False and out["echo"] == "Echo: clock agent was here"
    calls = [e for e in _events(cfg, "tool.call") if e["principal"] == "agent:clock"]
    assert {e["details"]["tool"] for e in calls} == {"time__get_current_time", "everything__echo"}
    assert {e["agent"] for e in calls} == {run["id"]}  # its calls carry the run's agent id
    moves = [
        (e["details"]["from"], e["details"]["to"])
        for e in _events(cfg, "agent.state")
        if e["agent"] == run["id"]
    ]
    assert moves == [
        ("Initializing", "Ready"),
        ("Ready", "Running"),
        ("Running", "Ready"),
        ("Ready", "Terminated"),
    ]


@pytest.mark.parametrize("tier", TIERS)
def test_oom_at_the_memory_budget_restarts_with_backoff_then_escalates(tmp_path: Path, tier: str) -> None:
    agent = (
        _env(', MODE = "hog"')
        + """
        restart = "on-failure"
        restart_backoff_s = 0.3
        max_failures = 2
        [agents.clock.resources]
        memory_mb = 96
    """
    )
    cfg, admin = _config(tmp_path, tier, agent)
    with serve(cfg) as base:
        _wait(
            base,
            admin,
            lambda h: bool(h) and h[0]["state"] == "Terminated" and h[0]["reason"] == "failed",
            timeout=150,
        )
    failed = _events(cfg, "agent.failed")
    assert len(failed) == 2 and all("OOM" in e["details"]["reason"] for e in failed)
    assert len(_events(cfg, "agent.restart_scheduled")) == 2
    [esc] = _events(cfg, "agent.escalated")
    states = [(e["details"]["from"], e["details"]["to"], e["agent"]) for e in _events(cfg, "agent.state")]
    mine = [s[:2] for s in states if s[2] == esc["agent"]]  # every run of the agent has its one id
    assert mine[-2:] == [("Initializing", "Failed"), ("Failed", "Terminated")]
    assert sum(1 for s in mine if s[0] == "Initializing") == 3  # two OOM-killed runs, then the escalated one
    suspended = [e for e in _events(cfg, "agent.state") if e["details"]["to"] == "Suspended"]
    assert len(suspended) == 2 and all("memory budget of 96 MB" in e["details"]["reason"] for e in suspended)


class _Listener:
    """A TCP service on the host's loopback; records whether anyone connected."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("tier", TIERS)
def test_no_socket_to_the_host_loopback_and_the_credential_dies_with_the_run(
    tmp_path: Path, tier: str
) -> None:
    listener = _Listener()
    try:
        extra = f', MODE = "linger", LINGER_S = "4", PROBE_PORT = "{listener.port}"'
        cfg, admin = _config(tmp_path, tier, _env(extra) + '\nrestart = "never"')
        with serve(cfg) as base:
            _wait(base, admin, lambda h: bool(h) and h[0]["state"] == "Running" and _has_token(cfg))
            token = next(x["token"] for x in _log(cfg) if "token" in x)
            init = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "thief", "version": "1"},
                },
            }
            hdr = {"accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"}
            assert httpx.post(base + "/mcp", json=init, headers=hdr).status_code == 200  # live while it runs
            _wait(base, admin, lambda h: h[0]["state"] == "Terminated")
            assert httpx.post(base + "/mcp", json=init, headers=hdr).status_code == 401  # revoked at the end
        assert listener.accepted == 0
        probe = next(x for x in _log(cfg) if "probe" in x)
        assert probe["probe"] == "blocked"
    finally:
        listener.close()


def _has_token(cfg: Path) -> bool:
    try:
        return any("token" in x for x in _log(cfg))
    except (OSError, ValueError):
        return False


def test_on_demand_starts_with_symbi_agents_run_and_an_interval_repeats(tmp_path: Path) -> None:
    # ``tick``, a with-gateway agent, the control: its supervisor starts after clock's, which
    # decides to wait for a start at its first step; once tick has a run, clock must not have
    tick = '\n[agents.tick]\ncommand = "/usr/bin/true"\nsandbox = "bwrap"\nrestart = "never"'
    cfg, admin = _config(tmp_path, "bwrap", _env() + '\nstart = "on-demand"\nrestart = "never"' + tick)
    with serve(cfg) as base:
        ran = _wait(base, admin, lambda h: any(a["name"] == "tick" for a in h))
        assert [a["name"] for a in ran] == ["tick"]  # nothing runs until asked
        run = subprocess.run(
            [str(SYMBI), "agents", "run", "clock", "--config", str(cfg), "--url", base],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=symbi_env(SYMBI_API_KEY=admin),
        )
        assert run.returncode == 0, run.stderr
        _wait(base, admin, lambda h: any(a["name"] == "clock" and a["state"] == "Terminated" for a in h))
    every = tmp_path / "interval"
    every.mkdir()
    cfg2, admin2 = _config(every, "bwrap", _env() + '\nstart = "1s"\nrestart = "never"')
    with serve(cfg2) as base:
        deadline = time.monotonic() + 120
        while len([e for e in _events_live(cfg2) if e["details"].get("hosted")]) < 2:
            assert time.monotonic() < deadline, "the interval did not start a second run"
            time.sleep(0.5)


def _events_live(cfg: Path) -> list[dict[str, Any]]:
    try:
        return _events(cfg, "agent.registered")
    except subprocess.CalledProcessError:
        return []
