"""A hosted agent in gVisor, in-process: the runsc command and the OCI spec the runtime builds,
read back from the bundle it wrote (a real run under runsc that attacks it is in
test_hosted_isolation.py).

Found by mutation testing (group "runtime": gvisor_agent.py had 374 mutants and "no tests";
hosted._command's gVisor branch survived): the tier ran only under `symbi serve` (a
subprocess, tests/runtime/test_hosted.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config.model import AgentConfig, ResourcesSection
from gateway.runtime.gvisor_agent import NETNS_PREFIX, NOBODY, RunscRun, in_netns
from gateway.runtime.launch import SOCKET_IN_SANDBOX
from gateway.runtime.resources import ResourceLimits
from tests.runtime.test_core import Recorder
from tests.runtime.test_hosted_isolation import _host
from tests.upstream.test_channels import GVISOR_CONTROL

pytestmark = pytest.mark.anyio


def _gone(*paths: str) -> bool:
    return not any(Path(p).exists() for p in paths)


def _spec(box: RunscRun) -> dict[str, Any]:
    return dict(json.loads(Path(box.bundle, "config.json").read_text()))


async def test_the_gvisor_command_and_spec_of_a_hosted_run(tmp_path: Path) -> None:
    ac = AgentConfig(
        command="/usr/bin/python3",
        args=("./agent.py", "plain"),
        env={"DATA": "./lib", "MODE": "x"},
        read_only_paths=("./lib",),
        sandbox="gvisor",
        resources=ResourcesSection(memory_mb=96, cpu_cores=0.5, disk_io_mbps=7),
    )
    h = _host(tmp_path, "gvisor", a=ac)
    conf = tmp_path / "conf"
    (conf / "agent.py").write_text("print(1)\n")
    limits = ResourceLimits.from_config(ac.resources)
    argv, box = h._command("a", ac, "gvisor", limits, "sk-secret", "tag1")
    try:
        assert isinstance(box, RunscRun) and box.cid == "symbi-agent-tag1"
        # runsc straight, in an empty network namespace of the run's own, without a network
        # stack, its state apart from Docker's
        assert argv[:3] == in_netns(box.netns) and not _gone(f"/run/netns/{box.netns}")
        assert argv[3:6] == ["runsc", "--root", box.state] and argv[-4:] == [
            "run",
            "--bundle",
            box.bundle,
            box.cid,
        ]
        assert "--network=none" in argv and not any(
            a.startswith("--network=") and a != "--network=none" for a in argv
        )
        spec = _spec(box)
        proc = spec["process"]
        assert proc["user"] == {"uid": NOBODY, "gid": NOBODY}
        assert proc["noNewPrivileges"] is True
        assert proc["capabilities"] == {
            k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
        }
        agent_py = str((conf / "agent.py").resolve())
        assert proc["args"] == ["/usr/bin/python3", agent_py, "plain"]
        env = dict(e.split("=", 1) for e in proc["env"])
        assert {
            k: env[k]
            for k in ("SYMBI_AGENT_TOKEN", "SYMBI_GATEWAY_SOCKET", "SYMBI_AGENT_NAME", "DATA", "MODE")
        } == {
            "SYMBI_AGENT_TOKEN": "sk-secret",
            "SYMBI_GATEWAY_SOCKET": SOCKET_IN_SANDBOX,
            "SYMBI_AGENT_NAME": "a",
            "DATA": str((conf / "lib").resolve()),
            "MODE": "x",
        }
        assert spec["root"]["readonly"] is True
        linux = spec["linux"]
        assert {n["type"] for n in linux["namespaces"]} >= {"pid", "ipc", "uts", "mount", "network"}
        res = linux["resources"]
        assert res["memory"] == {"limit": 96 * 1024 * 1024, "swap": 96 * 1024 * 1024}
        assert res["cpu"] == {"quota": 50_000, "period": 100_000}
        assert res["pids"] == {"limit": 512}  # runsc's own threads count here (sandbox notes)
        dev = os.stat("/").st_dev
        throttle = [{"major": os.major(dev), "minor": os.minor(dev), "rate": 7 * 1024 * 1024}]
        assert res["blockIO"] == {"throttleReadBpsDevice": throttle, "throttleWriteBpsDevice": throttle}
        assert linux["cgroupsPath"] == box.cgroup
        mounts = {m["destination"]: m for m in spec["mounts"]}
        # the socket is the one writable bind; every other host folder is read-only
        assert mounts[SOCKET_IN_SANDBOX] == {
            "destination": SOCKET_IN_SANDBOX,
            "type": "bind",
            "source": str(tmp_path / "gateway.sock"),
            "options": ["bind"],
        }
        binds = [m for m in spec["mounts"] if m["type"] == "bind" and m["destination"] != SOCKET_IN_SANDBOX]
        assert all("ro" in m["options"] for m in binds)
        binds = [m for m in binds if m["source"] != "/dev/null"]  # the covers of hidden files
        assert all(m["source"] == m["destination"] for m in binds)
        assert {m["source"] for m in binds} == {"/usr", str(conf.resolve()), str((conf / "lib").resolve())}
        assert mounts["/proc"] == {"destination": "/proc", "type": "proc", "source": "proc"}
        tmp = {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=64m"],
        }
        assert mounts["/tmp"] == tmp  # a small /tmp, no set-uid programs or device files in it
        # the gateway's own files inside the bound config folder are covered, after the bind
        order = [m["destination"] for m in spec["mounts"]]
        for hidden in (conf / "symbi.toml", conf / ".symbi"):
            at = order.index(str(hidden))
            assert at > order.index(str(conf.resolve()))
            m = spec["mounts"][at]
            assert (m["type"], m["source"]) in (("tmpfs", "tmpfs"), ("bind", "/dev/null"))
    finally:
        box.remove()
    assert _gone(box.bundle, box.state, f"/run/netns/{box.netns}")


async def test_a_gvisor_run_does_not_need_dockers_runsc_runtime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manager's "gvisor" tier is Docker with its runsc runtime; a hosted run uses runsc
    straight, so Docker being down does not refuse it (the seam: a tier reported down)."""
    ac = AgentConfig(command="/usr/bin/true", sandbox="gvisor")
    h = _host(tmp_path, "gvisor", a=ac)
    assert h.sandbox is not None
    monkeypatch.setattr(h.sandbox, "available", lambda name: (False, f"test: {name} down"))
    argv, box = h._command("a", ac, "gvisor", ResourceLimits.from_config(ac.resources), "k", "t")
    try:
        assert isinstance(box, RunscRun) and argv[3] == "runsc"
    finally:
        box.remove()
    from gateway.errors import GatewayError

    with pytest.raises(GatewayError):  # a tier that does go through the manager is refused
        h._command("a", ac, "bwrap", ResourceLimits.from_config(ac.resources), "k", "t")


def _cgroup_v1() -> bool:
    return Path("/sys/fs/cgroup/pids").is_dir()


def _runsc_limits(cgroup: str) -> dict[str, str]:
    """The limit files of the cgroup runsc made for the sandbox (v1 per controller)."""
    root = Path("/sys/fs/cgroup")
    names = {
        "memory": "memory.limit_in_bytes",
        "pids": "pids.max",
        "cpu": "cpu.cfs_quota_us",
        "blkio": "blkio.throttle.read_bps_device",
    }
    return {
        n: (root / c / cgroup.lstrip("/") / n).read_text()
        for c, n in names.items()
        if (root / c / cgroup.lstrip("/") / n).exists()
    }


def _filled(files: dict[str, str]) -> dict[str, str]:
    return {name: text for name, text in files.items() if text.strip()}


async def test_a_running_gvisor_agent_is_held_to_its_budgets_by_the_sandboxs_cgroup(tmp_path: Path) -> None:
    """What runsc applied, read from the cgroup files while the agent runs (not the spec)."""
    if not _cgroup_v1():
        pytest.skip("cgroup v1 hierarchies only here (this machine's); v2 paths are not read")
    ac = AgentConfig(
        command="/usr/bin/sleep",
        args=("600",),
        sandbox="gvisor",
        resources=ResourcesSection(memory_mb=112, cpu_cores=0.5, disk_io_mbps=5),
    )
    h = _host(tmp_path, "gvisor", a=ac)
    boxes: list[RunscRun] = []
    command = h._command

    def keep(*args: Any) -> Any:  # the real command; its sandbox kept to find its cgroup
        argv, box = command(*args)
        assert isinstance(box, RunscRun)
        boxes.append(box)
        return argv, box

    h._command = keep  # type: ignore[method-assign,assignment]
    files: dict[str, str] = {}
    with anyio.fail_after(60):  # a hang guard, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._run_once, "a", ac)
            # until runsc has made the sandbox's cgroup and written every limit into it (a file
            # exists before its limit is written: read in between under load, it was empty)
            while not boxes or len(files := _filled(_runsc_limits(boxes[0].cgroup))) < 4:
                await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
    assert _gone(boxes[0].bundle, boxes[0].state)  # the cancelled run's bundle and runsc state
    assert _own_runsc_cgroups() == []  # and its cgroups, which runsc's killed `run` left behind
    dev = os.stat("/").st_dev
    assert files["memory.limit_in_bytes"].split() == [str(112 * 1024 * 1024)]
    assert files["pids.max"].split() == ["512"]
    assert files["cpu.cfs_quota_us"].split() == ["50000"]
    assert files["blkio.throttle.read_bps_device"].split() == [
        f"{os.major(dev)}:{os.minor(dev)}",
        str(5 * 1024 * 1024),
    ]


async def test_a_gvisor_run_without_runsc_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runsc missing (the seam: it is installed on this machine, so `which` is made to miss it):
    the run is Failed as an invalid config, fail closed, and its credential revoked."""
    import shutil

    ac = AgentConfig(command="/usr/bin/true", sandbox="gvisor")
    h = _host(tmp_path, "gvisor", a=ac)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert await h._run_once("a", ac) == "invalid"
    run = h.runtime.agents.by_name("a")
    assert run is not None and run.reason == "failed"
    assert h.keys is not None and all(r.revoked is not None for r in h.keys.records())  # type: ignore[attr-defined]


async def test_a_gvisor_runs_peak_memory_is_reported_and_its_cgroup_removed(tmp_path: Path) -> None:
    """runsc removes the cgroups it made when the sandbox exits: the peak is read from one made
    beforehand (it read 0 MB for every gVisor run before), which goes with the run."""
    if not _cgroup_v1():
        pytest.skip("cgroup v1 hierarchies only here (this machine's); v2 paths are not read")
    hog = AgentConfig(
        command="/usr/bin/python3", args=("-c", "b = bytearray(40 * 1024 * 1024)"), sandbox="gvisor"
    )
    h = _host(tmp_path, "gvisor", a=hog)
    with anyio.fail_after(60):  # a hang guard, not a timing assertion
        assert await h._run_once("a", hog) == "ok"
    assert isinstance(h.events, Recorder)
    [exited] = [d for t, d, _, _ in h.events.events if t == "agent.exited"]
    assert exited["memory_peak_mb"] >= 40 and exited["oom"] is False
    assert _own_runsc_cgroups() == []


def _own_runsc_cgroups() -> list[Path]:
    return list(Path("/sys/fs/cgroup").glob(f"*/symbi-agent-{os.getpid()}-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
async def test_no_other_process_can_drive_a_gvisor_agent_through_runscs_control_socket(
    tmp_path: Path,
) -> None:
    """The attack: runsc serves its control API (exec in, signal, destroy; the agent's token
    is in its environment) on an abstract socket, ``@runsc-sandbox.<id>``, of the namespace it
    starts in, and answers any uid. In the host's, a uid-999 process (an unsandboxed upstream
    on a kernel without Landlock's scopes, any local user) listed the agent's processes. Each
    run now has an empty network namespace of its own; the gateway's own kill still works."""
    ac = AgentConfig(command="/usr/bin/sleep", args=("600",), sandbox="gvisor")
    h = _host(tmp_path, "gvisor", a=ac)
    boxes: list[RunscRun] = []
    command = h._command

    def keep(*args: Any) -> Any:
        argv, box = command(*args)
        assert isinstance(box, RunscRun)
        boxes.append(box)
        return argv, box

    h._command = keep  # type: ignore[method-assign,assignment]
    answers: list[str] = []
    ended = anyio.Event()

    async def run() -> None:
        await h._run_once("a", ac)
        ended.set()

    with anyio.fail_after(60):  # a hang guard, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not boxes:
                await anyio.sleep(0.05)
            name = f"runsc-sandbox.{boxes[0].cid}"
            thief = [
                "setpriv",
                "--reuid=999",
                "--regid=999",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                GVISOR_CONTROL,
            ]
            # until the sandbox's control server answers in either namespace: the run's own
            # (the control) or the host's (the attack)
            while not any(a.startswith("answered") for a in answers[-2:]):
                own = await anyio.run_process(
                    [*in_netns(boxes[0].netns), *thief, name, boxes[0].cid], check=False
                )
                host = await anyio.run_process([*thief, name, boxes[0].cid], check=False)
                answers[-2:] = [own.stdout.decode().strip(), host.stdout.decode().strip()]
                await anyio.sleep(0.1)
            boxes[0].kill()  # the gateway's own way in
            with anyio.move_on_after(20):
                await ended.wait()
            tg.cancel_scope.cancel()
    assert answers[0].startswith("answered") and answers[1].startswith("refused"), answers
    assert ended.is_set()  # runsc kill reached the sandbox in its namespace


def test_a_run_that_fails_before_it_starts_leaves_no_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's finding: a failure after the namespace was made (here the memory cgroup,
    the seam: this machine makes it) left it, and the run's folders, for the gateway's life."""
    import gateway.runtime.gvisor_agent as gv
    from gateway.errors import GatewayError

    def refuse(cgroup: str, limit: int) -> None:
        raise GatewayError("test: no memory cgroup")

    made: list[str] = []
    own = gv._own_netns

    def keep(tag: str) -> str:
        made.append(own(tag))
        return made[-1]

    monkeypatch.setattr(gv, "_memory_cgroup", refuse)
    monkeypatch.setattr(gv, "_own_netns", keep)
    limits = ResourceLimits.from_config(ResourcesSection())
    with pytest.raises(GatewayError):
        gv.gvisor_argv(
            "/usr/bin/true", [], {}, limits, ro_paths=[], socket=("/tmp", "/run/symbi"), run_tag="t"
        )
    assert made and _gone(f"/run/netns/{made[0]}")


def _own_runsc_kill() -> list[str] | None:
    """Another party's ``runsc kill`` of this process's one gVisor run: its namespace, and the
    state root and id on its ``runsc run`` command line (nsenter has exec'd runsc, our child)."""
    netns = sorted(Path("/run/netns").glob(f"{NETNS_PREFIX}{os.getpid()}-*"))
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            argv = (proc / "cmdline").read_bytes().decode().split("\0")[:-1]
        except (OSError, IndexError):
            continue
        if ppid == str(os.getpid()) and "runsc" in argv[0] and "run" in argv and len(netns) == 1:
            root = argv[argv.index("--root") + 1]
            return [*in_netns(netns[0].name), "runsc", "--root", root, "kill", argv[-1], "KILL"]
    return None


async def test_a_gvisor_agent_another_party_kills_is_not_over_its_memory_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another party's ``runsc kill`` (an operator's) exits 137, like the sandbox's OOM kill:
    its cgroup's ``oom_kill`` count says 0, and the run was read as over its budget all the same;
    then as an exit of its own (no other party's kill named), unlike the docker tier."""
    if not _cgroup_v1():
        pytest.skip("cgroup v1 hierarchies only here (this machine's); v2 paths are not read")
    said: list[tuple[bool, str | None]] = []
    end_cause = RunscRun.end_cause

    def recorded(self: RunscRun, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        said.append(end_cause(self, exit_code, ours))  # (the real answer, recorded: a seam, not a fake)
        return said[-1]

    monkeypatch.setattr(RunscRun, "end_cause", recorded)
    ac = AgentConfig(
        command="/usr/bin/python3", args=("-c", "import time; time.sleep(600)"), sandbox="gvisor"
    )
    h = _host(tmp_path, "gvisor", a=ac)
    outcome: list[str] = []

    async def run() -> None:
        outcome.append(await h._run_once("a", ac))

    with anyio.fail_after(90):  # a hang guard, not a timing assertion
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while True:  # until its sandbox exists, then the other party's kill
                await anyio.sleep(0.2)
                kill = _own_runsc_kill()
                if (
                    kill
                    and subprocess.run(kill, capture_output=True, timeout=30, check=False).returncode == 0
                ):
                    break
    assert outcome == ["failed"]
    assert isinstance(h.events, Recorder)
    [exited] = [d for t, d, _, _ in h.events.events if t == "agent.exited"]
    assert exited["exit_code"] == 137 and exited["oom"] is False  # a SIGKILL, not the budget's
    assert [e["type"] for e in h.runtime.recent_errors] == ["exit"]
    [(oom, other)] = said
    # said killed by a signal, its counter read (not the branch of a cgroup already gone)
    assert oom is False and other is not None and other.startswith("failure: killed by a signal (9)")
