"""The hosted-agent supervisor's decisions in-process: restart policy, backoff, start modes,
escalation bookkeeping and the run credential's life.

Found by mutation testing (group "runtime", scripts/mutate.py): tests/runtime/test_hosted.py
runs real hosted agents under a real ``symbi serve`` (a subprocess, which mutmut cannot
attribute), so every decision in ``HostedAgents._supervise`` survived being broken. Here:

- the supervisor loop runs against a scripted ``_run_once`` (the seam: one real run needs a
  sandbox tier and a process, which test_hosted.py covers end to end); each outcome is what
  the real ``_run_once`` returns, and the loop's answers (run again, wait for ``symbi agents
  run``, back off, stop) are what is checked;
- ``_run_once`` itself runs for real up to the sandbox: with a real file-backed API key store
  the run's credential is made, bound, and revoked when the run is refused.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, GatewaySection, ResourcesSection
from gateway.context import Principal
from gateway.errors import AuditError
from gateway.runtime import AgentState
from gateway.runtime import hosted as hosted_module
from gateway.runtime.agents import hosted_principal
from gateway.runtime.core import AgentRuntime
from gateway.runtime.hosted import HostedAgents
from gateway.runtime.launch import AgentHost, interval_s
from gateway.runtime.resources import ResourceLimits
from gateway.runtime.sandboxed import Cgroup, Container, Sandboxed, root_device
from gateway.server.auth import ApiKeyStore
from tests.runtime.test_core import BreakingRecorder, Recorder

pytestmark = pytest.mark.anyio
GUARD_S = 60  # a hang guard for a broken loop, never a timing assertion


class ScriptDone(Exception):
    """The script of outcomes ran out: the supervisor asked for one more run."""


class Scripted(HostedAgents):
    """HostedAgents whose runs return scripted outcomes (see the module docstring)."""

    def __init__(self, config: Config, outcomes: list[str]) -> None:
        self.rec = Recorder()
        super().__init__(config, AgentRuntime(config, self.rec), self.rec, sandbox=None, host=None)
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, AgentConfig]] = []

    async def _run_once(self, name: str, ac: AgentConfig) -> str:
        self.calls.append((name, ac))
        if not self.outcomes:
            raise ScriptDone
        return self.outcomes.pop(0)

    def restarts(self) -> list[tuple[Any, ...]]:
        return [
            (d["name"], d["after_s"], d["outcome"])
            for t, d, _, _ in self.rec.events
            if t == "agent.restart_scheduled"
        ]


def _config(**agent: Any) -> Config:
    return Config(agents={"a": AgentConfig(command="/bin/true", restart_backoff_s=0.001, **agent)})


async def _supervise(h: Scripted) -> None:
    with anyio.fail_after(GUARD_S):
        await h._supervise("a", h.config.agents["a"])


@pytest.mark.parametrize(
    ("start", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("on-demand", None),
        ("with-gateway", None),
    ],
)
def test_interval_of_a_start_setting(start: str, seconds: float | None) -> None:
    assert interval_s(start) == seconds


@pytest.mark.parametrize(
    ("restart", "outcomes", "runs"),
    [
        ("never", ["failed"], 1),
        ("never", ["ok"], 1),
        ("on-failure", ["ok"], 1),
        ("on-failure", ["failed", "failed", "ok"], 3),
    ],
)
async def test_the_restart_policy_decides_whether_a_run_follows(
    restart: str, outcomes: list[str], runs: int
) -> None:
    h = Scripted(_config(restart=restart), outcomes)
    await _supervise(h)  # returned: no more runs
    assert len(h.calls) == runs and h.outcomes == []
    assert all(call == ("a", h.config.agents["a"]) for call in h.calls)


async def test_restart_always_runs_again_after_success_and_failure() -> None:
    h = Scripted(_config(restart="always"), ["ok", "failed", "ok"])
    with pytest.raises(ScriptDone):
        await _supervise(h)
    assert len(h.calls) == 4  # it asked for a fourth run


@pytest.mark.parametrize("outcome", ["invalid", "escalated", "stopped"])
async def test_a_run_that_never_started_or_was_stopped_ends_the_supervisor(outcome: str) -> None:
    h = Scripted(_config(restart="always"), [outcome])
    await _supervise(h)
    assert len(h.calls) == 1 and h.restarts() == []


async def test_backoff_doubles_up_to_its_maximum_and_a_success_resets_it() -> None:
    h = Scripted(
        _config(restart="always", restart_backoff_max_s=0.004),
        ["failed", "failed", "failed", "failed", "ok", "failed"],
    )
    with pytest.raises(ScriptDone):
        await _supervise(h)
    assert h.restarts() == [
        ("a", 0.001, "failed"),
        ("a", 0.002, "failed"),
        ("a", 0.004, "failed"),
        ("a", 0.004, "failed"),
        ("a", 0.001, "ok"),
        ("a", 0.002, "failed"),
    ]


async def test_a_new_start_after_a_terminate_backs_off_afresh() -> None:
    """An on-demand agent's restarts doubled their backoff, an operator stopped its run, and
    the next `symbi agents run`'s first failure was restarted after the doubled backoff (the
    old start's): a new start backs off from ``restart_backoff_s`` again."""
    h = Scripted(
        _config(start="on-demand", restart="always", restart_backoff_max_s=0.004),
        ["failed", "failed", "stopped", "failed"],
    )

    async def supervise() -> None:
        with pytest.raises(ScriptDone):
            await _supervise(h)

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise)
        await wait_all_tasks_blocked()
        assert h.request_start("a") == "starting"
        while len(h.calls) < 3:  # failed, failed (each restarted), stopped: waits for a start
            await anyio.sleep(0.01)
        await wait_all_tasks_blocked()
        assert h.request_start("a") == "starting"
    assert h.restarts() == [("a", 0.001, "failed"), ("a", 0.002, "failed"), ("a", 0.001, "failed")]


async def test_on_demand_runs_only_when_asked_and_waits_again_after_each_run() -> None:
    # "stopped" (an operator ended the run) waits for the next request too: it returned, and
    # the next `symbi agents run` was answered "starting" and ran nothing
    h = Scripted(_config(start="on-demand", restart="never"), ["ok", "invalid", "failed", "stopped", "ok"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(_supervise, h)
        for asked in range(1, 6):
            await wait_all_tasks_blocked()
            assert len(h.calls) == asked - 1  # nothing runs before `symbi agents run`
            assert h.request_start("a") == "starting"
            await wait_all_tasks_blocked()
            assert len(h.calls) == asked
        tg.cancel_scope.cancel()
    assert h.outcomes == [] and h.restarts() == []


async def test_an_interval_runs_again_without_a_restart_policy_and_a_request_runs_it_early() -> None:
    h = Scripted(_config(start="1ms", restart="never"), ["ok", "failed"])
    with pytest.raises(ScriptDone):
        await _supervise(h)  # every 1 ms, whatever the outcome and the restart policy
    assert len(h.calls) == 3 and h.restarts() == []
    h = Scripted(_config(start="1h", restart="never"), ["ok", "ok"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(_supervise, h)
        await wait_all_tasks_blocked()
        assert len(h.calls) == 1  # the next run is an hour away
        h.request_start("a")
        await wait_all_tasks_blocked()
        assert len(h.calls) == 2
        tg.cancel_scope.cancel()


async def test_run_supervises_only_the_enabled_agents() -> None:
    config = Config(
        agents={
            "on": AgentConfig(command="/bin/true", restart="never"),
            "off": AgentConfig(command="/bin/true", enabled=False),
        }
    )
    h = Scripted(config, ["ok"])
    await h.run()
    assert [name for name, _ in h.calls] == ["on"]


def test_request_start_refuses_an_unknown_agent_and_a_live_run() -> None:
    from gateway.errors import GatewayError

    h = Scripted(_config(), [])
    with pytest.raises(GatewayError):
        h.request_start("nosuch")
    run = h.runtime.agents.add_hosted("a", hosted_principal("a", h.config.agents["a"]), priority=4, run=1)
    h.runtime.agents.transition(run, AgentState.READY, "test")
    assert h.request_start("a") == "already running"


def test_terminating_a_hosted_run_stops_its_process_and_a_session_agent_stops_nothing() -> None:
    h = Scripted(_config(), [])
    stopped: list[str] = []
    h._stop["a"] = lambda: stopped.append("a")  # what _execute registers for the live process
    rt = h.runtime
    session = rt.agents.for_session(Principal(id="a"), "c", "s1")  # a session agent named like nothing hosted
    rt.terminate(session, "operator")
    assert stopped == []
    run = rt.agents.add_hosted("a", hosted_principal("a", h.config.agents["a"]), priority=4, run=1)
    rt.agents.transition(run, AgentState.READY, "test")
    rt.terminate(run, "operator")
    assert stopped == ["a"] and run.state is AgentState.TERMINATED


# -- _run_once for real, up to the sandbox --------------------------------------------------


async def test_a_refused_run_revokes_the_credential_it_made(tmp_path: Path) -> None:
    """With a host (socket and key store) but no sandbox manager, the run is refused after its
    credential was made: that key is revoked, unbound, and the run is Failed then Terminated."""
    keys = ApiKeyStore(tmp_path / "keys.json")
    config = Config(agents={"a": AgentConfig(command="/bin/true", roles=("r",))})
    rec = Recorder()
    rt = AgentRuntime(config, rec)
    h = HostedAgents(config, rt, rec, sandbox=None, host=AgentHost(str(tmp_path / "gw.sock"), keys))
    assert await h._run_once("a", config.agents["a"]) == "invalid"
    made = keys.records()
    assert len(made) == 1 and (made[0].principal, made[0].roles, made[0].kind) == ("agent:a", ("r",), "agent")
    assert made[0].revoked and h.unrevoked == set()
    agent = rt.agents.by_name("a")
    assert agent is not None and agent.state is AgentState.TERMINATED
    assert [d["to"] for t, d, _, a in rec.events if t == "agent.state" and a == agent.id] == [
        "Failed",
        "Terminated",
    ]
    assert all(d["reason"] for t, d, _, _ in rec.events if t == "agent.state")
    assert (h.runs["a"], agent.session) == (1, "hosted:a:1")
    assert await h._run_once("a", config.agents["a"]) == "invalid"  # the next run: a new record, a new key
    again = rt.agents.by_name("a")
    assert again is not None and again is not agent and again.session == "hosted:a:2" and again.id == agent.id
    assert len(keys.records()) == 2 and all(r.revoked for r in keys.records())


async def test_without_symbi_serve_a_run_is_refused_before_any_credential(tmp_path: Path) -> None:
    config = Config(agents={"a": AgentConfig(command="/bin/true")})
    rec = Recorder()
    h = HostedAgents(config, AgentRuntime(config, rec), rec, sandbox=None, host=None)
    assert await h._run_once("a", config.agents["a"]) == "invalid"
    agent = h.runtime.agents.by_name("a")
    assert agent is not None and agent.state is AgentState.TERMINATED and agent.reason == "failed"


# -- one real run in the bwrap tier, in-process ---------------------------------------------


def _bwrap_host(
    tmp_path: Path, tier: str = "bwrap", rec: Recorder | None = None, **agents: AgentConfig
) -> tuple[HostedAgents, Recorder, ApiKeyStore]:
    from gateway.sandbox.manager import SandboxManager
    from tests.sandbox.conftest import require_tier

    config = Config(gateway=GatewaySection(data_dir=tmp_path / "data"), agents=agents)
    manager = SandboxManager(config, sweep_orphans=False)
    require_tier(manager, tier)
    socket = tmp_path / "gateway.sock"  # bound into the sandbox; these agents never dial it
    socket.touch()
    keys = ApiKeyStore(tmp_path / "keys.json")
    rec = Recorder() if rec is None else rec
    host = AgentHost(str(socket), keys)
    recordable = getattr(rec, "recordable", None)  # the audit log's ensure_writable, when it has one
    hosted = HostedAgents(
        config, AgentRuntime(config, rec), rec, sandbox=manager, host=host, recordable=recordable
    )
    return hosted, rec, keys


class CountingKeys(ApiKeyStore):
    """The real key store, counting revocations."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.revokes: list[str] = []

    def revoke(self, kid: str) -> bool:
        self.revokes.append(kid)
        return super().revoke(kid)


async def test_a_runs_credential_is_revoked_once_at_its_end(tmp_path: Path) -> None:
    """It was revoked twice on a normal end (the run's end, then the supervisor's finally):
    a second key-store write, a PostgreSQL round trip in a team deployment."""
    h, _, _ = _bwrap_host(tmp_path, ok=AgentConfig(command="/usr/bin/true", sandbox="bwrap"))
    keys = h.keys = CountingKeys(tmp_path / "counted-keys.json")
    assert await h._run_once("ok", h.config.agents["ok"]) == "ok"
    made = keys.records()
    assert len(made) == 1 and made[0].revoked and keys.revokes == [made[0].id]
    assert h.unrevoked == set()


async def test_a_run_that_fails_before_its_end_still_has_its_credential_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's end revokes its key; a run that raised before it got there (a crash in the
    supervisor, a cancellation) has it revoked by the supervisor, or the key would live on."""
    h, _, _ = _bwrap_host(tmp_path, ok=AgentConfig(command="/usr/bin/true", sandbox="bwrap"))
    keys = h.keys = CountingKeys(tmp_path / "counted-keys.json")

    async def crashing(*args: Any) -> str:
        raise RuntimeError("the supervisor failed mid-run")

    monkeypatch.setattr(h, "_execute", crashing)
    with pytest.raises(RuntimeError):
        await h._run_once("ok", h.config.agents["ok"])
    made = keys.records()
    assert len(made) == 1 and made[0].revoked and keys.revokes == [made[0].id]


def _states(rec: Recorder, agent_id: str) -> list[str]:
    return [d["to"] for t, d, _, a in rec.events if t == "agent.state" and a == agent_id]


async def test_a_real_run_that_exits_0_is_ready_then_terminated(tmp_path: Path) -> None:
    # exits 0 only if the run got its name, a credential and the gateway's socket at its place
    check = (
        'echo to-stdout; echo to-stderr >&2; test "$SYMBI_AGENT_NAME" = ok && test -n "$SYMBI_AGENT_TOKEN"'
        ' && test "$SYMBI_GATEWAY_SOCKET" = /run/symbi/gateway.sock && test -e "$SYMBI_GATEWAY_SOCKET"'
    )
    ok = AgentConfig(command="/usr/bin/sh", args=("-c", check), sandbox="bwrap")
    h, rec, keys = _bwrap_host(tmp_path, ok=ok)
    started = time.monotonic()
    for _ in range(2):  # the second run finds its log folder made
        assert await h._run_once("ok", h.config.agents["ok"]) == "ok"
    run = h.runtime.agents.by_name("ok")
    assert run is not None and _states(rec, run.id) == ["Ready", "Running", "Ready", "Terminated"] * 2
    assert all(d["reason"] for t, d, _, _ in rec.events if t == "agent.state")  # every edge says why
    ready = [d["reason"] for t, d, _, _ in rec.events if t == "agent.state" and d["to"] == "Ready"]
    assert "bwrap" in ready[0]  # the tier it was given (the default tier here is gvisor)
    assert run.priority == ok.priority and h.runtime.limits_of(run) == ResourceLimits.from_config(
        ok.resources
    )
    usage = h.runtime.usage_of(run)
    exited = [(d, p, a) for t, d, p, a in rec.events if t == "agent.exited"]
    want = {
        "agent": run.id,
        "name": "ok",
        "exit_code": 0,
        "oom": False,
        "memory_peak_mb": round(usage.memory_peak_mb, 1),
    }
    assert exited[-1] == (want, "agent:ok", run.id)  # the usage holds the last run's peak
    assert [(d["exit_code"], p, a) for d, p, a in exited] == [(0, "agent:ok", run.id)] * 2
    assert all(isinstance(d["memory_peak_mb"], float) for d, _, _ in exited)
    assert 0 < usage.longest_call_s <= time.monotonic() - started  # the run's time, counted
    # the run's credential no longer maps to it (a key made for it names no agent afterwards)
    kid = keys.records()[-1].id
    caller = Principal(id="agent:ok", kind="agent", source="key", claims={"key_id": kid})
    assert h.runtime.agents.for_session(caller, "c", "s").hosted is False
    assert (run.in_flight, run.hosted_busy, h._stop) == (0, False, {})
    assert [r.revoked is not None for r in keys.records()] == [True, True] and h.unrevoked == set()
    fresh = AgentRuntime(h.config, Recorder())
    assert h.runtime.pool.as_json() == fresh.pool.as_json()  # the resource slot was given back
    # the process's stdout and stderr go to <data_dir>/agents/NAME.log (`symbi agents logs`)
    log = (h.config.data_dir / "agents" / "ok.log").read_text()
    assert log.count("to-stdout") == 2 and log.count("to-stderr") == 2


async def test_a_real_failing_run_is_suspended_counted_and_then_escalates(tmp_path: Path) -> None:
    bad = AgentConfig(command="/usr/bin/sh", args=("-c", "exit 3"), sandbox="bwrap", max_failures=2)
    h, rec, keys = _bwrap_host(tmp_path, bad=bad)
    assert await h._run_once("bad", bad) == "failed"
    run = h.runtime.agents.by_name("bad")
    assert run is not None and _states(rec, run.id) == ["Ready", "Running", "Suspended", "Terminated"]
    failed = [(d, p, a) for t, d, p, a in rec.events if t == "agent.failed"]
    suspended = [d["reason"] for t, d, _, _ in rec.events if t == "agent.state" and d["to"] == "Suspended"]
    assert failed == [({"name": "bad", "reason": suspended[0], "exit_code": 3}, "agent:bad", run.id)]
    exited = [(d["exit_code"], d["oom"], p, a) for t, d, p, a in rec.events if t == "agent.exited"]
    assert exited == [(3, False, "agent:bad", run.id)]
    errors = list(h.runtime.recent_errors)
    assert [{k: e[k] for k in ("agent", "code", "target", "type")} for e in errors] == [
        {"agent": run.id, "code": "agent_failed", "target": "bad", "type": "exit"}
    ]
    assert isinstance(errors[0]["time"], float)
    assert all(d["reason"] for t, d, _, _ in rec.events if t in ("agent.state", "agent.failed"))
    assert [d["oom"] for t, d, _, _ in rec.events if t == "agent.exited"] == [False]
    # a second failure within failure_window_s reaches max_failures = 2: the next run never starts
    assert await h._run_once("bad", bad) == "failed"
    assert await h._run_once("bad", bad) == "escalated"
    again = h.runtime.agents.by_name("bad")
    assert again is not None and _states(rec, again.id)[-2:] == ["Failed", "Terminated"]
    escalated = [(d, p, a) for t, d, p, a in rec.events if t == "agent.escalated"]
    assert escalated == [({"name": "bad", "failures": 2}, "agent:bad", again.id)]
    assert again.reason and all(d["reason"] for t, d, _, _ in rec.events if t == "agent.state")
    assert len(keys.records()) == 2  # the escalated run made no credential


async def test_a_real_run_over_its_execution_budget_is_killed_and_counted_as_a_failure(
    tmp_path: Path,
) -> None:
    slow = AgentConfig(
        command="/usr/bin/sleep",
        args=("600",),
        sandbox="bwrap",
        resources=ResourcesSection(execution_timeout_s=0.5),
    )
    h, rec, _ = _bwrap_host(tmp_path, slow=slow)
    with anyio.fail_after(GUARD_S):  # the budget, not this guard, ends the run
        assert await h._run_once("slow", slow) == "failed"
    run = h.runtime.agents.by_name("slow")
    assert run is not None and _states(rec, run.id) == ["Ready", "Running", "Suspended", "Terminated"]
    assert run.reason.startswith("manual override")  # Suspended (the budget breach) -> Terminated
    assert [d["name"] for t, d, _, _ in rec.events if t == "agent.failed"] == ["slow"]
    assert all(d["reason"] for t, d, _, _ in rec.events if t in ("agent.state", "agent.failed"))


async def test_an_operator_terminating_a_real_run_kills_its_process_and_stops_the_supervisor(
    tmp_path: Path,
) -> None:
    slow = AgentConfig(command="/usr/bin/sleep", args=("600",), sandbox="bwrap", restart="always")
    h, rec, _ = _bwrap_host(tmp_path, slow=slow)
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "slow", slow)
            while (run := h.runtime.agents.by_name("slow")) is None or "slow" not in h._stop:
                await anyio.sleep(0.01)  # until the process is started
            assert run is not None
            (kid,) = h.runtime.agents._bound  # the one credential made, bound to this run
            caller = Principal(id="agent:slow", kind="agent", source="key", claims={"key_id": kid})
            assert h.runtime.agents.for_session(caller, "any-client", "any-session") is run  # its credential
            h.runtime.begin(run, "a tool call of its own")  # through its credential
            h.runtime.end(run, 0.1)
            assert run.state is AgentState.RUNNING  # its process keeps it Running between calls
            assert h.runtime.terminate(run, "operator: enough").startswith("terminating")
        # the supervisor returned ("stopped"): no restart, whatever restart = "always" says
    assert run is not None and run.state is AgentState.TERMINATED and h.runs["slow"] == 1
    assert [t for t, *_ in rec.events if t in ("agent.failed", "agent.restart_scheduled")] == []


async def test_the_docker_command_of_a_run_mounts_the_socket_and_read_only_paths_with_io_limits(
    tmp_path: Path,
) -> None:
    """The docker tier's argv (built, not started): the run's container name, the socket as
    its one way out, the read-only paths, the budgets, and the env with ./ and ../ paths
    resolved against the config file's folder."""
    conf = tmp_path / "conf"
    (conf / "lib").mkdir(parents=True)
    ac = AgentConfig(
        command="/usr/bin/python3",
        args=("./agent.py", "plain"),
        env={"DATA": "./data", "UP": "../shared", "MODE": "x"},
        read_only_paths=("./lib",),
        sandbox="docker",
        resources=ResourcesSection(memory_mb=96, disk_io_mbps=7),
    )
    h, _, _ = _bwrap_host(tmp_path, "docker", a=ac)
    h.config = h.config.model_copy(update={"source": conf / "symbi.toml"})
    argv, box = h._command("a", ac, "docker", ResourceLimits.from_config(ac.resources), "sk-secret", "tag1")
    assert isinstance(box, Container) and box.name == "symbi-agent-a-tag1"
    pairs = list(zip(argv, argv[1:], strict=False))
    lib = str((conf / "lib").resolve())
    assert ("--name", "symbi-agent-a-tag1") in pairs
    assert ("-v", f"{tmp_path / 'gateway.sock'}:/run/symbi/gateway.sock") in pairs
    assert ("-v", f"{lib}:{lib}:ro") in pairs and ("--memory", "96m") in pairs and "--network=none" in argv
    # the names only: the values (the credential) reach the docker CLI in its environment
    named = {v for k, v in pairs if k == "-e"}
    assert not any("sk-secret" in a for a in argv)
    env = box.launch_env
    assert {"SYMBI_AGENT_TOKEN", "SYMBI_GATEWAY_SOCKET", "SYMBI_AGENT_NAME", "DATA", "UP", "MODE"} <= named
    assert {
        k: env[k]
        for k in ("SYMBI_AGENT_TOKEN", "SYMBI_GATEWAY_SOCKET", "SYMBI_AGENT_NAME", "DATA", "UP", "MODE")
    } == {
        "SYMBI_AGENT_TOKEN": "sk-secret",
        "SYMBI_GATEWAY_SOCKET": "/run/symbi/gateway.sock",
        "SYMBI_AGENT_NAME": "a",
        "DATA": str((conf / "data").resolve()),
        "UP": str((tmp_path / "shared").resolve()),
        "MODE": "x",
    }
    assert argv[-3:] == ["/usr/bin/python3", str((conf / "agent.py").resolve()), "plain"]
    dev = root_device()
    if dev is not None:  # the root file system's block device (none in some containers)
        assert ("--device-read-bps", f"{dev}:7mb") in pairs and ("--device-write-bps", f"{dev}:7mb") in pairs
    # the run's options go before the image's own mounts (docker reads options up to the image)
    assert argv.index("--name") < argv.index("/usr:/usr:ro")


async def test_a_hosted_run_refuses_an_unavailable_tier_and_the_none_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.config.sections import SecuritySection

    h, rec, keys = _bwrap_host(tmp_path, a=AgentConfig(command="/usr/bin/true"))
    h.config = h.config.model_copy(update={"security": SecuritySection(default_sandbox_tier="none")})
    assert await h._run_once("a", h.config.agents["a"]) == "invalid"  # never unsandboxed
    assert keys.records() == []  # refused before any credential
    # a tier that cannot run (the seam: every tier is installed on this machine)
    assert h.sandbox is not None
    monkeypatch.setattr(h.sandbox.tiers["bwrap"], "available", lambda **_: (False, "test: not installed"))
    ac = AgentConfig(command="/usr/bin/true", sandbox="bwrap")
    assert await h._run_once("a", ac) == "invalid"
    assert [r.revoked is not None for r in keys.records()] == [True]


async def test_cancelling_a_real_run_kills_its_process_and_revokes_its_credential(tmp_path: Path) -> None:
    """The gateway shutting down cancels the supervisors: the run's process is killed, its
    credential revoked, its resource slot given back and its cgroups removed (nothing of it
    outlives the gateway)."""
    marker = f"599.{os.getpid()}{id(tmp_path) % 10000}"  # a sleep this test can find in /proc
    slow = AgentConfig(command="/usr/bin/sleep", args=(marker,), sandbox="bwrap")
    h, _, keys = _bwrap_host(tmp_path, slow=slow)
    boxes: list[Sandboxed] = []
    command = h._command

    def spy(*args: Any) -> tuple[list[str], Sandboxed]:  # the real command, its sandbox kept to check
        argv, box = command(*args)
        boxes.append(box)
        return argv, box

    h._command = spy  # type: ignore[method-assign, assignment]  # a spy over the real method
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "slow", slow)
            while "slow" not in h._stop:
                await anyio.sleep(0.01)  # until the process is started
            assert _running(marker)
            tg.cancel_scope.cancel()
        # the cancellation ended the supervisor cleanly (no error in place of the cancel)
    assert [r.revoked is not None for r in keys.records()] == [True] and h._stop == {}
    # the run's cgroup is removed although the run was cancelled (the clean-up is shielded)
    [box] = boxes
    assert isinstance(box, Cgroup) and box.cg.dirs and not any(d.exists() for d in box.cg.dirs.values())
    fresh = AgentRuntime(h.config, Recorder())
    assert h.runtime.pool.as_json() == fresh.pool.as_json()
    with anyio.fail_after(GUARD_S):
        while _running(marker):  # killed: gone once the kernel has reaped it
            await anyio.sleep(0.05)


def _running(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def memory_hog(sandbox: Literal["bwrap", "docker", "gvisor"]) -> AgentConfig:
    """An agent that allocates 400 MB under a 48 MB budget: the kernel's OOM kill, run once."""
    return AgentConfig(
        command="/usr/bin/python3",
        args=("-c", "b = bytearray(400 * 1024 * 1024)"),
        sandbox=sandbox,
        resources=ResourcesSection(memory_mb=48),
        restart="never",
    )


async def test_a_real_run_over_its_memory_budget_is_oom_killed_and_reported_as_such(tmp_path: Path) -> None:
    hog = memory_hog("bwrap")
    h, rec, _ = _bwrap_host(tmp_path, hog=hog)
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("hog", hog) == "failed"
    assert [d["oom"] for t, d, _, _ in rec.events if t == "agent.exited"] == [True]
    assert [e["type"] for e in h.runtime.recent_errors] == ["oom"]
    reasons = [d["reason"] for t, d, _, _ in rec.events if t == "agent.failed"]
    assert len(reasons) == 1 and reasons[0]  # an OOM kill at the budget, said so


async def test_a_credential_the_key_store_could_not_revoke_is_revoked_at_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key store down when a run ends (PostgreSQL here; the seam: a file store that fails
    once): the run still ends, and its credential is revoked before the next run starts."""
    h, _, keys = _bwrap_host(tmp_path, a=AgentConfig(command="/usr/bin/true"))
    h.sandbox = None  # runs are refused after their credential is made: enough to end one
    real = keys.revoke
    down = [True]

    def revoke(kid: str) -> bool:
        if down.pop() if down else False:
            raise OSError("key store unreachable")
        return real(kid)

    monkeypatch.setattr(keys, "revoke", revoke)
    assert await h._run_once("a", h.config.agents["a"]) == "invalid"
    first = keys.records()[0].id
    assert h.unrevoked == {first} and keys.get(first) is not None and keys.get(first).revoked is None  # type: ignore[union-attr]
    assert await h._run_once("a", h.config.agents["a"]) == "invalid"
    assert h.unrevoked == set() and all(r.revoked is not None for r in keys.records())


async def test_a_real_run_cannot_read_the_gateways_stdin(tmp_path: Path) -> None:
    # Under `symbi mcp` the gateway's stdin is the MCP client's JSON-RPC stream: a hosted
    # agent that inherited it could read (and swallow) the client's requests. The run's stdin
    # must be empty. The gateway's fd 0 is a pipe holding a secret for the length of the run.
    secret = "client-request-" + os.urandom(8).hex()
    grab = AgentConfig(command="/usr/bin/sh", args=("-c", "echo got:$(head -c 200)"), sandbox="bwrap")
    h, _, _ = _bwrap_host(tmp_path, grab=grab)
    r, w = os.pipe()
    os.write(w, (secret + "\n").encode())
    os.close(w)
    saved = os.dup(0)
    os.dup2(r, 0)
    os.close(r)
    try:
        assert await h._run_once("grab", grab) == "ok"
    finally:
        os.dup2(saved, 0)
        os.close(saved)
    log = (h.config.data_dir / "agents" / "grab.log").read_text()
    assert "got:" in log  # the command ran and reached the read
    assert secret not in log


async def test_a_run_that_ended_while_the_audit_log_was_broken_keeps_its_restart_policy(
    tmp_path: Path,
) -> None:
    """A restart = "on-failure" agent exits 0 while the log is broken: its exit's record raised
    ``AuditError`` into the supervisor, which started the agent again once the log recorded
    (a run its policy says not to make; an escalated or operator-stopped one likewise). Now
    the exit is applied as usual: the supervisor ends after one run."""
    ok = AgentConfig(command="/usr/bin/sh", args=("-c", "sleep 1"), sandbox="bwrap", restart="on-failure")
    rec = BreakingRecorder()
    h, _, _ = _bwrap_host(tmp_path, rec=rec, ok=ok)

    async def mend_after_the_exit() -> None:
        while h.runtime.agents.by_name("ok") is None or h._stop.get("ok") is None:
            await anyio.sleep(0.02)  # its process runs
        rec.broken = True
        while "ok" in h._stop:
            await anyio.sleep(0.02)
        await anyio.sleep(0.5)
        rec.broken = False  # the log records again before the supervisor's next try

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(mend_after_the_exit)
            await h._supervise("ok", ok)
    assert h.runs["ok"] == 1
    run = h.runtime.agents.by_name("ok")
    assert run is not None and run.state is AgentState.TERMINATED


class _RefusingOne(Recorder):
    """An audit log that refuses the records naming one agent (``refused``): a record queued
    before the log's writer failed passes ``ensure_writable``, the next ones are refused."""

    refused: str | None = None

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        if agent is not None and agent == self.refused:
            raise AuditError("audit log cannot be written: full")
        super().emit(event_type, details, principal=principal, agent=agent)


def _one_slot_taken(tmp_path: Path, rec: Recorder) -> tuple[HostedAgents, AgentConfig, Any]:
    """A real bwrap host whose pool has one slot ("priority" allocation), taken by ``low``
    (priority 1, left Initializing); ``hi`` (priority 5) displaces it: (host, hi, low)."""
    from gateway.config.sections import RuntimeSection
    from gateway.sandbox.manager import SandboxManager
    from tests.sandbox.conftest import require_tier

    ac = AgentConfig(command="/usr/bin/true", sandbox="bwrap", priority=5)
    runtime = RuntimeSection(allocation="priority", pool_slots=1, pool_slot_cpu=1.0, pool_slot_memory_mb=1024)
    config = Config(gateway=GatewaySection(data_dir=tmp_path / "data"), runtime=runtime, agents={"hi": ac})
    manager = SandboxManager(config, sweep_orphans=False)
    require_tier(manager, "bwrap")
    (tmp_path / "gateway.sock").touch()
    host = AgentHost(str(tmp_path / "gateway.sock"), ApiKeyStore(tmp_path / "keys.json"))
    h = HostedAgents(config, AgentRuntime(config, rec), rec, sandbox=manager, host=host)
    low = h.runtime.agents.add_hosted("low", hosted_principal("low", ac), priority=1, run=1)
    h.runtime.pool.allocate(low.id, ResourceLimits.from_config(ac.resources), 1)
    return h, ac, low


async def test_a_displaced_victims_refused_record_gives_the_slot_and_cgroup_back(tmp_path: Path) -> None:
    """A hosted run displaces a lower-priority agent from the only slot; the victim's terminate
    record raises ``AuditError``. The run was refused ("invalid") and its slot never released
    (only the run's own ``finally`` did): the pool kept it for good. Now the displacement
    stands unrecorded, the run is made, and the slot is released on every way out."""
    rec = _RefusingOne()
    h, ac, low = _one_slot_taken(tmp_path, rec)
    rt, config = h.runtime, h.config
    rt.agents.transition(low, AgentState.READY, "valid config")
    rec.refused = low.id
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("hi", ac) == "ok"  # "invalid" before: the run refused
    assert low.state is AgentState.TERMINATED  # displaced all the same
    assert rt.pool.as_json() == AgentRuntime(config, Recorder()).pool.as_json()  # its slot free again


async def test_a_displacement_refused_by_an_initializing_victim_is_a_failed_run_that_is_retried(
    tmp_path: Path,
) -> None:
    """The victim of a displacement is still Initializing: its terminate is refused
    (``InvalidTransition``). The run was reported "invalid" (a bad config), so a with-gateway
    agent was never run again. Now it is a failed run: the restart back-off runs it again."""
    rec = Recorder()
    h, ac, low = _one_slot_taken(tmp_path, rec)
    placed = h.runtime.pool.as_json()
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("hi", ac) == "failed"  # "invalid" before: never retried
    run = h.runtime.agents.by_name("hi")
    assert run is not None and run.state is AgentState.TERMINATED
    assert low.state is AgentState.INITIALIZING  # left as it was
    # its slot still its own: taken out of the pool before, the retry placed ``hi`` beside it
    assert h.runtime.pool.as_json() == placed
    # a failed run as any other: counted for escalation, on the record
    assert len(h._failures["hi"]) == 1
    assert [d["name"] for t, d, _, _ in rec.events if t == "agent.failed"] == ["hi"]


async def test_a_displacement_with_an_initializing_victim_displaces_none_of_them(tmp_path: Path) -> None:
    """Two victims: ``ready`` (Ready, displaced first) and ``low`` (Initializing). ``ready`` was
    terminated before ``low``'s terminate was refused: an agent ended for a run never made.
    Now the states are checked first: nobody is displaced and the pool is as it was."""
    h, ac, low = _one_slot_taken(tmp_path, Recorder())
    rt = h.runtime
    rt.pool.release(low.id)
    half = dataclasses.replace(ResourceLimits.from_config(ac.resources), cpu_cores=0.5)
    ready = rt.agents.add_hosted("ready", hosted_principal("ready", ac), priority=1, run=1)
    rt.agents.transition(ready, AgentState.READY, "valid config")
    rt.pool.allocate(ready.id, half, 1)
    rt.pool.allocate(low.id, half, 2)
    placed = rt.pool.as_json()
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("hi", ac) == "failed"
    assert ready.state is AgentState.READY and low.state is AgentState.INITIALIZING
    assert rt.pool.as_json() == placed


async def test_an_on_demand_start_refused_by_a_broken_log_is_run_once_the_log_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's start was refused (the log broken when the run was to start); after the
    retry wait the supervisor waited for a new start: the one asked for was dropped."""
    monkeypatch.setattr(hosted_module, "AUDIT_RETRY_S", 0.2)  # the retry's wait, not under test
    od = AgentConfig(command="/usr/bin/true", sandbox="bwrap", start="on-demand", restart="never")
    rec = BreakingRecorder()
    h, _, _ = _bwrap_host(tmp_path, rec=rec, od=od)
    rec.broken = True
    h._wake["od"].set()  # the operator's start

    async def mend() -> None:
        while "od" not in h.refusing:
            await anyio.sleep(0.02)  # the run refused
        rec.broken = False

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(mend)
            tg.start_soon(h._supervise, "od", od)
            while h.runs["od"] < 1:  # before: never (the start was dropped)
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert h.runs["od"] == 1 and "od" not in h.refusing


async def _paused_without_a_run(h: HostedAgents, name: str, runs: int) -> None:
    """No run after ``name``'s pause (a restart's backoff, an interval's or a retry's wait),
    proven on the supervisor's own step rather than by outwaiting the pause: a run after it is
    counted in the same step as the pause's end (no await between), so once the pause is over
    and every task has moved on, an unchanged count means none was made."""
    while name in h._pauses:
        await anyio.sleep(0.01)
    await wait_all_tasks_blocked()
    assert h.runs[name] == runs


@pytest.mark.parametrize("start", ["with-gateway", "on-demand"])
async def test_a_terminate_in_the_restart_backoff_stops_the_restart(tmp_path: Path, start: str) -> None:
    """A failed run's record is Terminated already while the supervisor backs off: an
    operator's terminate then ("already terminated") was not seen by it, and the backoff's end
    ran the agent the operator had just terminated. It ends the backoff now, as a terminate of
    a live run ends its supervisor: no restart."""
    bad = AgentConfig(
        command="/usr/bin/sh", args=("-c", "exit 3"), sandbox="bwrap", restart_backoff_s=3.0, start=start
    )
    h, rec, _ = _bwrap_host(tmp_path, bad=bad)
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "bad", bad)
            if start == "on-demand":
                await wait_all_tasks_blocked()
                assert h.request_start("bad") == "starting"
            while not any(t == "agent.restart_scheduled" for t, *_ in rec.events):
                await anyio.sleep(0.01)  # the first run failed: the backoff has begun
            run = h.runtime.agents.by_name("bad")
            assert run is not None and run.state is AgentState.TERMINATED
            assert h.runtime.terminate(run, "operator: enough") == "already terminated"
            await _paused_without_a_run(h, "bad", 1)  # (without the fix: a second run at 3 s)
            if start == "on-demand":  # terminated, not gone: the next `symbi agents run` runs it
                assert h.request_start("bad") == "starting"
                while h.runs["bad"] < 2:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


async def test_a_terminate_between_interval_runs_stops_the_next_run(tmp_path: Path) -> None:
    """An interval agent's run ended (Terminated): a terminate while it waits for the next
    interval was not seen either, and the next interval ran it. No run follows now."""
    tick = AgentConfig(command="/usr/bin/sh", args=("-c", "exit 0"), sandbox="bwrap", start="3s")
    h, _, _ = _bwrap_host(tmp_path, tick=tick)
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "tick", tick)
            while "tick" not in h._pauses:
                await anyio.sleep(0.01)  # the first run is over: the interval's wait has begun
            run = h.runtime.agents.by_name("tick")
            assert run is not None and run.state is AgentState.TERMINATED
            assert h.runtime.terminate(run, "operator: enough") == "already terminated"
            await _paused_without_a_run(h, "tick", 1)  # (without the fix: a second run at 3 s)
    assert h.runs["tick"] == 1  # and the supervisor ended (the group did not need cancelling)


async def test_a_terminate_in_the_audit_retry_wait_stops_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart refused by a broken log waits for the retry; a terminate of the run's record
    (Terminated already) in that wait was not seen: the log mended, the retry ran the agent just
    terminated. It ends the wait now, as in a restart's backoff."""
    monkeypatch.setattr(hosted_module, "AUDIT_RETRY_S", 3.0)
    bad = AgentConfig(command="/usr/bin/sh", args=("-c", "exit 3"), sandbox="bwrap", restart_backoff_s=1.0)
    rec = BreakingRecorder()
    h, _, _ = _bwrap_host(tmp_path, rec=rec, bad=bad)
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "bad", bad)
            while not any(t == "agent.restart_scheduled" for t, *_ in rec.events):
                await anyio.sleep(0.01)  # the first run failed: the backoff has begun
            rec.broken = True  # the restart is refused: the retry's wait
            while "bad" not in h.refusing:
                await anyio.sleep(0.01)
            rec.broken = False
            run = h.runtime.agents.by_name("bad")
            assert run is not None and run.state is AgentState.TERMINATED
            assert h.runtime.terminate(run, "operator: enough") == "already terminated"
            await _paused_without_a_run(h, "bad", 1)  # (without the fix: the retry's run at 3 s)
    assert h.runs["bad"] == 1  # and the supervisor ended (the group did not need cancelling)


async def test_a_new_supervisor_is_not_halted_by_an_earlier_ones_terminate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminate halts its run's supervisor (``_halted``). A supervisor started later (the
    lease taken again) whose first start the log refused found that old halt at its retry and
    ended: the agent ran nowhere until a restart. A new supervisor starts unhalted."""
    monkeypatch.setattr(hosted_module, "AUDIT_RETRY_S", 0.3)
    bad = AgentConfig(command="/usr/bin/sh", args=("-c", "exit 3"), sandbox="bwrap", restart_backoff_s=1.0)
    rec = BreakingRecorder()
    h, _, _ = _bwrap_host(tmp_path, rec=rec, bad=bad)
    h._halted.add("bad")  # as an earlier holding's terminate in a backoff left it
    rec.broken = True  # the first start refused: the retry's wait
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._supervise, "bad", bad)
            while "bad" not in h.refusing:
                await anyio.sleep(0.01)
            rec.broken = False
            while h.runs.get("bad", 0) < 1:  # without the fix: the supervisor ended, no run
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
