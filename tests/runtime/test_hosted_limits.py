"""The budgets of a bwrap hosted run, read back from the cgroup files of the running agent,
and a fork bomb that only the pids limit stops.

Found by mutation testing (group "runtime": hosted._command__mutmut_42/43/45/59 survived):
the memory and time budgets of a hosted run were tested, its CPU quota, pids limit and
disk-I/O throttle were not. Here the agent's own process is found in /proc and the limits
are read from the cgroups the kernel says it is in -- what is enforced, not what was asked.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import anyio
import pytest

from gateway.config.sections import AgentConfig, ResourcesSection
from tests.runtime.test_hosted_supervisor import GUARD_S, _bwrap_host

pytestmark = pytest.mark.anyio
HOSTED_PIDS = 256  # the pids budget of every hosted run (HostedAgents._command)


def _pid_of(command: str, marker: str) -> int | None:
    """The process running ``command marker`` (the agent itself, not its launcher, whose
    command line also holds the marker before it has joined the run's cgroups)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:2] == [command.encode(), marker.encode()]:
                return int(cmdline.parent.name)
        except (OSError, ValueError):
            continue
    return None


def _cgroup_files(pid: int) -> dict[str, str]:
    """The limit files of the cgroups ``pid`` is in (v1 per controller, or v2), by name."""
    root = Path("/sys/fs/cgroup")
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if ctrls == "" and (root / "cgroup.controllers").exists():  # v2
            v2 = ("memory.max", "pids.max", "cpu.max", "io.max")
            out.update({n: (root / rel / n).read_text() for n in v2 if (root / rel / n).exists()})
            continue
        for c in ctrls.split(","):
            base = root / c if (root / c).is_dir() else root / ctrls
            names = {
                "memory": ("memory.limit_in_bytes",),
                "pids": ("pids.max",),
                "cpu": ("cpu.cfs_quota_us", "cpu.cfs_period_us"),
                "blkio": ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"),
            }.get(c, ())
            out.update({n: (base / rel / n).read_text() for n in names if (base / rel / n).exists()})
    return out


async def test_a_running_bwrap_agent_is_held_to_its_cpu_pids_memory_and_disk_io_budgets(
    tmp_path: Path,
) -> None:
    marker = f"598.{os.getpid()}{id(tmp_path) % 10000}"  # a sleep this test can find in /proc
    ac = AgentConfig(
        command="/usr/bin/sleep",
        args=(marker,),
        sandbox="bwrap",
        resources=ResourcesSection(memory_mb=80, cpu_cores=0.25, disk_io_mbps=3),
    )
    h, _, _ = _bwrap_host(tmp_path, a=ac)
    files: dict[str, str] = {}
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(h._run_once, "a", ac)
            while (pid := _pid_of(ac.command, marker)) is None:
                await anyio.sleep(0.01)  # until the agent's process is started
            files = _cgroup_files(pid)
            tg.cancel_scope.cancel()
    dev = os.stat("/").st_dev
    device, bps = f"{os.major(dev)}:{os.minor(dev)}", 3 * 1024 * 1024
    if "cpu.max" in files:  # cgroup v2
        assert files["memory.max"].split() == [str(80 * 1024 * 1024)]
        assert files["pids.max"].split() == [str(HOSTED_PIDS)]
        assert files["cpu.max"].split() == ["25000", "100000"]
        assert f"{device} rbps={bps} wbps={bps}" in files["io.max"]
        return
    assert files["memory.limit_in_bytes"].split() == [str(80 * 1024 * 1024)]
    assert files["pids.max"].split() == [str(HOSTED_PIDS)]
    assert (files["cpu.cfs_quota_us"].split(), files["cpu.cfs_period_us"].split()) == (["25000"], ["100000"])
    assert files["blkio.throttle.read_bps_device"].split() == [device, str(bps)]
    assert files["blkio.throttle.write_bps_device"].split() == [device, str(bps)]


# Forks children that wait on a pipe, until a fork fails or 600 are made; prints the count
# and the errno of the failed fork. Nothing but the pids cgroup stops it below 600: the
# memory budget is far above what 600 sleeping forks use and RLIMIT_NPROC is not set.
FORK_BOMB = """
import json, os
r, w = os.pipe()
forked, err = 0, None
for _ in range(600):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    forked += 1
print(json.dumps({"forked": forked, "errno": err}), flush=True)
"""


async def test_a_fork_bomb_in_a_bwrap_agent_stops_at_the_pids_limit(tmp_path: Path) -> None:
    bomb = AgentConfig(
        command="/usr/bin/python3",
        args=("-c", FORK_BOMB),
        sandbox="bwrap",
        resources=ResourcesSection(memory_mb=1024),
        restart="never",
    )
    h, _, _ = _bwrap_host(tmp_path, bomb=bomb)
    with anyio.fail_after(GUARD_S):
        assert await h._run_once("bomb", bomb) == "ok"  # the bomb ran to its report and exited
    log = (h.config.data_dir / "agents" / "bomb.log").read_text()
    [out] = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    assert out["errno"] == errno.EAGAIN  # refused by the pids cgroup ...
    # ... at its limit: the launcher, bwrap and the agent itself hold a few of the 256 pids
    assert HOSTED_PIDS - 8 <= out["forked"] < HOSTED_PIDS
