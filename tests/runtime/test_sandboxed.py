"""How a hosted run's sandbox says it ended (gateway/runtime/sandboxed.py), with real Docker.

An operator's ``docker kill`` of a hosted agent's container exits 137, like the kernel's
OOM kill at its memory budget; with ``--rm`` the container (and its OOMKilled) is gone by
then, and the run was read as over its memory budget. Docker's events tell the two apart."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from gateway.config.model import AgentConfig
from tests.runtime.test_core import Recorder
from tests.runtime.test_hosted_isolation import _host

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
GUARD_S = 90  # a hang guard, never a timing assertion


def _running(prefix: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "--filter", f"name={prefix}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.split()


async def test_a_hosted_container_another_party_kills_is_not_over_its_memory_budget(tmp_path: Path) -> None:
    name = f"killed{os.getpid()}"  # its container's name is this run's alone
    ac = AgentConfig(
        command="/usr/bin/python3", args=("-c", "import time; time.sleep(600)"), sandbox="docker"
    )
    h = _host(tmp_path, "docker", **{name: ac})
    outcome: list[str] = []

    async def run() -> None:
        outcome.append(await h._run_once(name, ac))

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not (cname := _running(f"symbi-agent-{name}-")):
                await anyio.sleep(0.2)
            subprocess.run(["docker", "kill", *cname], capture_output=True, timeout=30, check=True)
    assert outcome == ["failed"]
    assert isinstance(h.events, Recorder)
    [exited] = [d for t, d, _, _ in h.events.events if t == "agent.exited"]
    assert exited["exit_code"] == 137 and exited["oom"] is False  # a SIGKILL, not the budget's
    assert [e["type"] for e in h.runtime.recent_errors] == ["exit"]
