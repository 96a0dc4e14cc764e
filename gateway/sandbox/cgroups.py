"""Per-run cgroups for the bubblewrap tier: memory, pids and CPU limits.

Supports cgroup v1 (this machine: hybrid, v1 ``memory``/``pids``/``cpu`` hierarchies) and
v2 (``memory.max``/``pids.max``/``cpu.max``). Groups are made *under the gateway's own
cgroup* in each hierarchy (so whoever accounts for the gateway also accounts for its
sandboxes) and named ``symbi-<pid>-<id>``: a group whose gateway pid is gone is an
orphan that :func:`cleanup_orphans` kills and removes.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import SandboxUnavailable
from gateway.sandbox.base import pid_alive

ROOT = Path("/sys/fs/cgroup")
PREFIX = "symbi-"
_NAME_RE = re.compile(r"^symbi-(\d+)-[0-9a-f]+$")
V1_CONTROLLERS = ("memory", "pids", "cpu")


def _own_paths() -> dict[str, Path]:
    """controller -> this process's cgroup dir (v1 per controller; "unified" for v2)."""
    paths: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        rel = rel.lstrip("/")
        if ctrls == "":
            if (ROOT / "cgroup.controllers").exists():  # pure v2 mount
                paths["unified"] = ROOT / rel
            continue
        for c in ctrls.split(","):
            if c in V1_CONTROLLERS and (ROOT / c).is_dir():
                paths[c] = ROOT / c / rel
            elif c == "cpu" and (ROOT / "cpu,cpuacct").is_dir():
                paths[c] = ROOT / "cpu,cpuacct" / rel
    return paths


def _mode() -> tuple[str, dict[str, Path]]:
    paths = _own_paths()
    if "unified" in paths:
        ctrl = paths["unified"] / "cgroup.controllers"
        have = set(ctrl.read_text().split()) if ctrl.exists() else set()
        if {"memory", "pids"} <= have:
            return "v2", paths
    if all(c in paths for c in ("memory", "pids")):
        return "v1", paths
    raise SandboxUnavailable("no usable cgroup memory+pids controllers (v1 or v2)")


def check() -> str:
    """ "v1" or "v2" if per-run groups can be made here; SandboxUnavailable (with why) if not."""
    version, own = _mode()
    for d in own.values():
        if not os.access(d, os.W_OK):
            raise SandboxUnavailable(f"cgroup {d} is not writable")
    return version


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read_kv(path: Path) -> dict[str, int]:
    """A cgroup counters file (``name value`` lines) as a dict; unreadable: empty."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


@dataclass
class RunCgroup:
    """The cgroup(s) of one run. ``procs_files`` are what the launcher writes ``$$`` to."""

    name: str
    version: str
    dirs: dict[str, Path]

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files:
            try:
                out.update(int(x) for x in f.read_text().split())
            except OSError:
                pass
        return out

    def oom_killed(self) -> bool:
        if self.version == "v2":
            return read_kv(self.dirs["unified"] / "memory.events").get("oom_kill", 0) > 0
        return read_kv(self.dirs["memory"] / "memory.oom_control").get("oom_kill", 0) > 0

    def pids_limit_hit(self) -> bool:
        d = self.dirs.get("unified") or self.dirs["pids"]
        return read_kv(d / "pids.events").get("max", 0) > 0

    def kill_all(self, deadline_s: float = 5.0) -> None:
        """SIGKILL every process in the group until it is empty (forks race the first pass)."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        """Kill what is left and remove the directories (retrying while the kernel reaps)."""
        self.kill_all()
        for d in self.dirs.values():
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def create(memory_mb: int, pids: int, cpus: float) -> RunCgroup:
    """Make the cgroup(s) of one run with its limits; raises SandboxUnavailable if it can't."""
    version, own = _mode()
    name = f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    mem = str(memory_mb * 1024 * 1024)
    period = 100_000
    quota = max(int(cpus * period), 1000)
    dirs: dict[str, Path] = {}
    cg = RunCgroup(name, version, dirs)
    try:
        if version == "v2":
            d = own["unified"] / name
            d.mkdir()
            dirs["unified"] = d
            _write(d / "memory.max", mem)
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(pids))
            if (d / "cpu.max").exists():
                _write(d / "cpu.max", f"{quota} {period}")
        else:
            for c in ("memory", "pids", "cpu"):
                if c not in own:
                    continue
                d = own[c] / name
                d.mkdir()
                dirs[c] = d
            _write(dirs["memory"] / "memory.limit_in_bytes", mem)
            memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                _write(memsw, mem)  # no swapping around the limit
            _write(dirs["pids"] / "pids.max", str(pids))
            if "cpu" in dirs:
                _write(dirs["cpu"] / "cpu.cfs_period_us", str(period))
                _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
    except OSError as e:
        cg.remove()
        raise SandboxUnavailable(f"cannot create the sandbox cgroup: {e}") from e
    return cg


def throttle_io(cg: RunCgroup, mbps: int) -> None:
    """Read/write bandwidth limit on the root file system's device (v1 blkio / v2 io.max)."""
    dev = os.stat("/").st_dev
    major, minor = os.major(dev), os.minor(dev)
    bps = mbps * 1024 * 1024
    try:
        if cg.version == "v2":
            _write(cg.dirs["unified"] / "io.max", f"{major}:{minor} rbps={bps} wbps={bps}")
            return
        own = _own_paths_v1_blkio()
        d = own / cg.name
        d.mkdir()
        cg.dirs["blkio"] = d
        _write(d / "blkio.throttle.read_bps_device", f"{major}:{minor} {bps}")
        _write(d / "blkio.throttle.write_bps_device", f"{major}:{minor} {bps}")
    except OSError as e:
        raise SandboxUnavailable(f"cannot limit disk I/O (blkio) for {cg.name}: {e}") from e


def _own_paths_v1_blkio() -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, rel = line.split(":", 2)
        if "blkio" in ctrls.split(","):
            return ROOT / "blkio" / rel.lstrip("/")
    raise OSError("no blkio cgroup hierarchy")


def memory_peak_mb(cg: RunCgroup) -> float:
    """The group's peak memory use (0 when it cannot be read)."""
    try:
        if cg.version == "v2":
            raw = (cg.dirs["unified"] / "memory.peak").read_text()
        else:
            raw = (cg.dirs["memory"] / "memory.max_usage_in_bytes").read_text()
        return int(raw.strip()) / (1024 * 1024)
    except (OSError, ValueError, KeyError):
        return 0.0


def cleanup_orphans(*, include_own: bool = False) -> list[str]:
    """Remove ``symbi-*`` groups whose gateway process is gone (or ours, if asked)."""
    try:
        version, own = _mode()
    except (SandboxUnavailable, OSError):
        return []
    removed: list[str] = []
    by_name: dict[str, dict[str, Path]] = {}
    for ctrl, base in own.items():
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for d in entries:
            m = _NAME_RE.match(d.name)
            if not m or not d.is_dir():
                continue
            pid = int(m.group(1))
            if pid == os.getpid() and not include_own:
                continue
            if pid != os.getpid() and pid_alive(pid):
                continue
            by_name.setdefault(d.name, {})[ctrl] = d
    for name, dirs in by_name.items():
        RunCgroup(name, version, dirs).remove()
        removed.append(name)
    return removed


def list_all() -> list[Path]:
    """Every ``symbi-*`` cgroup dir under the gateway's own cgroups, whoever made it."""
    out: list[Path] = []
    try:
        _, own = _mode()
    except (SandboxUnavailable, OSError):
        return out
    for base in own.values():
        try:
            out.extend(d for d in base.iterdir() if _NAME_RE.match(d.name))
        except OSError:
            pass
    return out


def list_ours() -> list[Path]:
    """``symbi-*`` cgroup dirs of this process or of dead ones (for leak checks); a live
    gateway's groups are its own business."""
    out: list[Path] = []
    for d in list_all():
        m = _NAME_RE.match(d.name)
        if m and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1)))):
            out.append(d)
    return out
