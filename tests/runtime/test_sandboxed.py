"""How a hosted run's sandbox says it ended (gateway/runtime/sandboxed.py), with real Docker.

An operator's ``docker kill`` of a hosted agent's container exits 137, like the kernel's
OOM kill at its memory budget; with ``--rm`` the container (and its OOMKilled) is gone by
then, and the run was read as over its memory budget. Docker's events tell the two apart."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from gateway.config.model import AgentConfig
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.sandboxed import Container
from tests.runtime.test_core import Recorder
from tests.runtime.test_hosted_isolation import _host
from tests.runtime.test_hosted_supervisor import memory_hog

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
GUARD_S = 90  # a hang guard, never a timing assertion


SLEEP = "import time; time.sleep(600)"


async def _sleeper_then(
    tmp_path: Path, name: str, act: Callable[[HostedAgents, list[str]], None], code: str = SLEEP
) -> tuple[HostedAgents, str]:
    """A hosted docker agent ``name`` that runs ``code`` (sleeps), run once; ``act`` is done to
    it (given its containers' names) once it runs. The host, and the run's outcome."""
    ac = AgentConfig(command="/usr/bin/python3", args=("-c", code), sandbox="docker")
    h = _host(tmp_path, "docker", **{name: ac})

    outcome: list[str] = []

    async def run() -> None:
        outcome.append(await h._run_once(name, ac))

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not (cname := _running(f"symbi-agent-{name}-")):
                await anyio.sleep(0.2)
            act(h, cname)
    [ended] = outcome
    return h, ended


def _running(prefix: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "--filter", f"name={prefix}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.split()


async def test_a_hosted_container_another_party_kills_is_not_over_its_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also: its end is asked off the event loop (Docker's events are read for up to 5 s:
    asked on the loop, every non-zero hosted exit stalled every call of the gateway)."""
    asked_in: list[int] = []
    own = Container.end_cause

    def end_cause(self: Container, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        asked_in.append(threading.get_ident())
        return own(self, exit_code, ours)

    monkeypatch.setattr(Container, "end_cause", end_cause)
    loop_thread = threading.get_ident()
    name = f"killed{os.getpid()}"  # its container's name is this run's alone

    def kill(_: HostedAgents, cname: list[str]) -> None:
        subprocess.run(["docker", "kill", *cname], capture_output=True, timeout=30, check=True)

    h, outcome = await _sleeper_then(tmp_path, name, kill)
    assert outcome == "failed"
    assert isinstance(h.events, Recorder)
    [exited] = [d for t, d, _, _ in h.events.events if t == "agent.exited"]
    assert exited["exit_code"] == 137 and exited["oom"] is False  # a SIGKILL, not the budget's
    assert [e["type"] for e in h.runtime.recent_errors] == ["exit"]
    assert len(asked_in) == 1 and asked_in[0] != loop_thread


async def test_a_hosted_container_over_its_memory_budget_is_said_so(tmp_path: Path) -> None:
    """The counter-case: the kernel's OOM kill of a hosted container is still the budget's
    (inspect's OOMKilled, Docker's ``oom`` event, or a 137 with no other party's kill)."""
    name = f"hog{os.getpid()}"
    hog = memory_hog("docker")
    h = _host(tmp_path, "docker", **{name: hog})
    with anyio.fail_after(GUARD_S):
        assert await h._run_once(name, hog) == "failed"
    assert isinstance(h.events, Recorder)
    assert [d["oom"] for t, d, _, _ in h.events.events if t == "agent.exited"] == [True]
    assert [e["type"] for e in h.runtime.recent_errors] == ["oom"]


def test_an_end_the_docker_cli_gave_asks_docker_nothing() -> None:
    """A run that ended by its own exit or the docker CLI's (125: no container was made, a
    missing bind path, a name conflict) is no kill: its events query found no ``die``, waited
    out its bound on a worker thread, and named it "may have been killed"."""
    ended = Container(f"symbi-agent-never-made-{os.getpid()}")
    assert ended.end_cause(125) == (False, None)
    assert ended.end_cause(0) == (False, None)


async def test_an_agent_that_answers_another_partys_sigterm_with_exit_1_is_said_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exit below 128 may follow another party's kill: a SIGTERM (``docker stop``) the agent
    answers with exit 1 was said "exited with code 1" when ends up to 128 asked Docker nothing.
    The real ``end_cause``, its answers recorded (a seam, not a fake)."""
    said: list[tuple[bool, str | None]] = []
    own = Container.end_cause

    def end_cause(self: Container, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        said.append(own(self, exit_code, ours))
        return said[-1]

    monkeypatch.setattr(Container, "end_cause", end_cause)
    name = f"termed{os.getpid()}"
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(1)); time.sleep(600)"

    def term(_: HostedAgents, cname: list[str]) -> None:
        time.sleep(2)  # its interpreter up and its handler set (the exit code below checks it was)
        subprocess.run(["docker", "kill", "-s", "TERM", *cname], capture_output=True, timeout=30, check=True)

    h, outcome = await _sleeper_then(tmp_path, name, term, code)
    assert outcome == "failed"
    assert isinstance(h.events, Recorder)
    assert [d["exit_code"] for t, d, _, _ in h.events.events if t == "agent.exited"] == [1]
    [(oom, other)] = said
    assert oom is False and other is not None  # another party's kill, not an exit of its own


async def test_a_hosted_container_the_gateway_stops_asks_dockers_events_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway's own stop (an operator's) was asked of Docker's events as any kill was, its
    answer (another party's kill) unused: up to EVENTS_WAIT_S on a worker thread at every stop.
    The real ``container_end``, its calls counted (a seam, not a fake)."""
    from gateway.sandbox import docker_api

    asked: list[str] = []
    real = docker_api.container_end

    def counted(api: object, cid: str, exit_code: int | None) -> tuple[bool, str | None]:
        asked.append(cid)
        return real(api, cid, exit_code)

    monkeypatch.setattr(docker_api, "container_end", counted)
    name = f"stopped{os.getpid()}"
    # the gateway's stop, as an operator's ``agent stop`` calls it
    _, outcome = await _sleeper_then(tmp_path, name, lambda h, _: h._stop[name]())
    assert outcome == "stopped"
    assert asked == []  # its events never read
