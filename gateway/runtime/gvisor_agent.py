"""A hosted agent in gVisor: ``runsc run`` on an OCI bundle, straight (not through Docker).

Docker's runsc runtime here is configured without host Unix sockets, and the gateway's
socket is the agent's only way out; so the runtime builds a minimal bundle itself and runs
``runsc --network=none --host-uds=open``: a read-only root with only /usr, the agent's own
files and the socket bound in (the gateway's own files inside them covered), uid 65534, no capabilities, and the budgets as OCI resources
(memory, CPU quota, pids, block I/O) that runsc applies to the sandbox's cgroup.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.runtime.resources import ResourceLimits
from gateway.runtime.sandboxed import Sandboxed
from gateway.sandbox.base import masked_paths, read_only_binds
from gateway.sandbox.cgroups import read_kv

_logger = logging.getLogger("symbi.runtime.gvisor")
NOBODY = 65534


class RunscRun(Sandboxed):
    def __init__(self, bundle: str, state: str, cid: str, cgroup: str, netns: str) -> None:
        self.bundle, self.state, self.cid, self.cgroup, self.netns = bundle, state, cid, cgroup, netns

    def _runsc(self, *args: str) -> None:
        # runsc reaches the sandbox through its control socket, in the run's namespace
        argv = [*in_netns(self.netns), "runsc", "--root", self.state, *args]
        subprocess.run(argv, capture_output=True, timeout=30, check=False)

    def kill(self) -> None:
        self._runsc("kill", self.cid, "KILL")

    def memory_peak_mb(self) -> float:
        try:
            raw = Path(f"/sys/fs/cgroup/memory{self.cgroup}/memory.max_usage_in_bytes").read_text()
            return int(raw) / (1024 * 1024)
        except (OSError, ValueError):
            return 0.0

    def end_cause(self, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        """The kernel's OOM kill is the sandbox cgroup's ``oom_kill`` count: a SIGKILL (137)
        another party sent (``runsc kill``, a host ``kill -9``) is none of the budget's."""
        # the parsed counter, not a substring: ``oom_kill_disable`` is in every readable file
        counts = read_kv(Path(f"/sys/fs/cgroup/memory{self.cgroup}/memory.oom_control"))
        if counts.get("oom_kill", 0) > 0:
            return True, None
        if exit_code not in (137, -9):
            return False, None
        if "oom_kill" in counts:  # a SIGKILL none of the budget's
            return False, "failure: killed by a signal (9): another party or the runtime"
        return False, "failure: killed, and its memory cgroup does not say by whom"  # (gone, unread)

    def remove(self) -> None:
        self._runsc("delete", "--force", self.cid)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.bundle, ignore_errors=True)
        shutil.rmtree(self.state, ignore_errors=True)
        # the memory cgroup made for the peak (see _memory_cgroup), and those runsc made and
        # could not remove itself (its `run` process was killed: a cancelled run)
        for d in Path("/sys/fs/cgroup").glob(f"*/{self.cgroup.lstrip('/')}"):
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)  # the kernel is still releasing the sandbox's processes


def gvisor_argv(
    command: str,
    args: list[str],
    env: Mapping[str, str],
    limits: ResourceLimits,
    *,
    ro_paths: list[str],
    socket: tuple[str, str],
    run_tag: str,
    hidden: Sequence[str] = (),
) -> tuple[list[str], RunscRun]:
    if shutil.which("runsc") is None or os.geteuid() != 0:
        raise GatewayError(
            "sandbox tier 'gvisor' is unavailable: runsc is not installed or the gateway is not root"
        )
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    netns = _own_netns(tag)  # first: a refusal leaves nothing else behind
    box = RunscRun(
        tempfile.mkdtemp(prefix="symbi-agent-gv-"),
        tempfile.mkdtemp(prefix="symbi-runsc-"),
        f"symbi-agent-{run_tag}",
        f"/symbi-agent-{tag}",
        netns,
    )
    try:
        root = _rootfs(box.bundle)
        binds = sorted({*read_only_binds(command, args, None), *ro_paths}, key=len)
        _memory_cgroup(box.cgroup, limits.memory_mb * 1024 * 1024)
        spec = _oci_spec([command, *args], env, limits, root, _mounts(binds, hidden, socket), box.cgroup)
        Path(box.bundle, "config.json").write_text(json.dumps(spec))
    except BaseException:
        box.remove()  # the namespace, the folders and the cgroup: nothing of a run that never ran
        raise
    runsc = ["runsc", "--root", box.state, "--network=none", "--host-uds=open", "run", "--bundle", box.bundle]
    return [*in_netns(netns), *runsc, box.cid], box


# runsc serves its control API (exec, signal, destroy) on an abstract Unix socket of the
# network namespace it starts in, and answers any uid (the sandbox's user namespace maps an
# unmapped peer to nobody, its own uid): in the host's, any local user or upstream could drive
# the agent, whose token is in its environment. Each run has an empty namespace of its own.
NETNS_PREFIX = "symbi-gv-"


def in_netns(name: str) -> list[str]:
    """argv prefix that runs a command in the named namespace (``nsenter``, unlike ``ip netns
    exec``, leaves /sys and so the cgroups runsc makes as they are)."""
    return ["nsenter", f"--net=/run/netns/{name}", "--"]


def _own_netns(tag: str) -> str:
    """A new empty network namespace (``symbi-gv-<pid>-<tag>``), after removing those a gateway
    no longer running left behind."""
    for path in Path("/run/netns").glob(f"{NETNS_PREFIX}*"):
        pid = path.name.removeprefix(NETNS_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            subprocess.run(["ip", "netns", "del", path.name], capture_output=True, timeout=30, check=False)
    if shutil.which("nsenter") is None:
        raise GatewayError("sandbox tier 'gvisor' is unavailable: nsenter (util-linux) is not installed")
    name = f"{NETNS_PREFIX}{tag}"
    made = subprocess.run(
        ["ip", "netns", "add", name], capture_output=True, text=True, timeout=30, check=False
    )
    if made.returncode != 0:
        raise GatewayError(
            f"sandbox tier 'gvisor' is unavailable: no network namespace of its own ({made.stderr.strip()})"
        )
    return name


def _rootfs(bundle: str) -> Path:
    """The bundle's empty root: mount points, and /bin, /lib... as links into the bound /usr."""
    root = Path(bundle, "rootfs")
    for d in ("usr", "tmp", "proc", "dev", "run/symbi"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in ("bin", "lib", "lib64", "sbin"):
        (root / d).symlink_to(f"usr/{d}")
    return root


def _mounts(binds: list[str], hidden: Sequence[str], socket: tuple[str, str]) -> list[dict[str, Any]]:
    """/proc, a small /tmp, /usr and the agent's folders read-only, the gateway's socket."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=64m"],
        },
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
        *({"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]} for d in binds),
        # the gateway's own files inside a bound folder: an empty folder or file, never its own
        *(
            {"destination": p, "type": "tmpfs", "source": "tmpfs", "options": ["ro", "size=4k", "mode=0555"]}
            if is_dir
            else {"destination": p, "type": "bind", "source": "/dev/null", "options": ["bind", "ro"]}
            for p, is_dir in dict.fromkeys(masked_paths(binds, hidden))
        ),
        {"destination": socket[1], "type": "bind", "source": socket[0], "options": ["bind"]},
    ]


def _oci_spec(
    argv: list[str],
    env: Mapping[str, str],
    limits: ResourceLimits,
    root: Path,
    mounts: list[dict[str, Any]],
    cgroup: str,
) -> dict[str, Any]:
    """The OCI config: uid 65534 with no capabilities on a read-only root, its own namespaces
    (no network), and the budgets as the cgroup's resources."""
    dev = os.stat("/").st_dev
    bps = limits.disk_io_mbps * 1024 * 1024
    throttle = [{"major": os.major(dev), "minor": os.minor(dev), "rate": bps}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": NOBODY, "gid": NOBODY},
            "args": argv,
            "env": ["PATH=/usr/bin:/bin", "HOME=/tmp", *(f"{k}={v}" for k, v in env.items())],
            "cwd": "/tmp",
            "noNewPrivileges": True,
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
        },
        "root": {"path": str(root), "readonly": True},
        "hostname": "agent",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "resources": {
                "memory": {"limit": limits.memory_mb * 1024 * 1024, "swap": limits.memory_mb * 1024 * 1024},
                "cpu": {"quota": int(limits.cpu_cores * 100_000), "period": 100_000},
                "pids": {"limit": 512},  # runsc's own threads count here (see the sandbox notes)
                "blockIO": {"throttleReadBpsDevice": throttle, "throttleWriteBpsDevice": throttle},
            },
            "cgroupsPath": cgroup,
        },
    }


def _memory_cgroup(cgroup: str, limit: int) -> None:
    """runsc removes the cgroups it made when the sandbox exits, before the supervisor reads the
    run's peak memory: the memory one is made here (and removed by RunscRun.remove). runsc
    leaves the limits of a cgroup it did not make alone, so the memory budget is set here too."""
    d = Path(f"/sys/fs/cgroup/memory{cgroup}")
    try:
        d.mkdir()
    except OSError as e:  # no v1 memory hierarchy: runsc makes and limits its own; the peak reads 0
        _logger.debug("no memory cgroup made for the peak of %s: %s", cgroup, e)
        return
    try:
        for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
            if (d / name).exists():
                (d / name).write_text(str(limit))
    except OSError as e:
        d.rmdir()
        raise GatewayError(f"cannot set the memory budget of the gVisor sandbox {cgroup}: {e}") from e
