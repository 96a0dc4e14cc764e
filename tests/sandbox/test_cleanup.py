"""Nothing is left behind: not after a crashed gateway, not after an orphan from a dead pid."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.sandbox import SandboxManager, cgroups
from gateway.sandbox.docker_tier import docker_client

from .conftest import ROOT, own_leftovers, require_tier

pytestmark = pytest.mark.sandbox

CRASHER = """
import sys
from gateway.config.model import Config
from gateway.sandbox import SandboxManager, SandboxRequest, Limits
m = SandboxManager(Config(), sweep_orphans=False)
print("ready", flush=True)
m.run(sys.argv[1], SandboxRequest(code="import time; print('started', flush=True); time.sleep(300)"),
      Limits(timeout_s=300))
"""


def test_orphans_of_a_killed_gateway_are_swept(manager: SandboxManager, tier: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, tier], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        found: list[str] = []
        while time.monotonic() < deadline and not found:  # the sandbox is up
            found = _of_pid(manager, tier, proc.pid)
            time.sleep(0.2)
        assert found, "the crashing gateway's sandbox never appeared"
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)  # a gateway crash: no finally blocks run
        proc.wait()
    manager.cleanup_orphans()
    assert _of_pid(manager, tier, proc.pid) == []
    assert own_leftovers(manager, tier) == []


def _of_pid(manager: SandboxManager, tier: str, pid: int) -> list[str]:
    if tier == "bwrap":
        return [str(p) for p in _all_cgroups() if p.name.startswith(f"symbi-{pid}-")]
    cs = docker_client().containers.list(
        all=True,
        filters={"label": f"symbi.sandbox.owner={os.uname().nodename}:{pid}"},
        ignore_removed=True,  # another process's orphan sweep may remove it mid-listing
    )
    return [c.id for c in cs]


def _all_cgroups() -> list[Path]:
    return cgroups.list_all()


def _plant_orphan(dead_pid: int) -> tuple[str, dict[str, Path], subprocess.Popen[bytes]]:
    """A cgroup named as if the dead gateway ``dead_pid`` had made it, with a live process in it."""
    name = f"symbi-{dead_pid}-{secrets.token_hex(6)}"  # unique: other sessions run this test too
    cg = cgroups.create(64, 16, 0.5)
    orphan_dirs = {}
    for ctrl, d in cg.dirs.items():  # rename it as if a dead gateway had made it
        target = d.parent / name
        d.rmdir()
        target.mkdir()
        orphan_dirs[ctrl] = target
    sleeper = subprocess.Popen(
        ["/bin/sh", "-c", f"echo $$ > {orphan_dirs['pids']}/cgroup.procs && exec sleep 300"]
    )
    deadline = time.monotonic() + 30
    while sleeper.poll() is None and time.monotonic() < deadline:  # until it is in the cgroup
        with contextlib.suppress(OSError):  # (gone if another sweep took it already)
            if str(sleeper.pid) in (orphan_dirs["pids"] / "cgroup.procs").read_text().split():
                break
        time.sleep(0.02)
    return name, orphan_dirs, sleeper


def test_cgroup_orphan_with_a_live_process_is_killed_and_removed(manager: SandboxManager) -> None:
    require_tier(manager, "bwrap")
    # a pid above pid_max can never be alive (a reaped child's pid could be reused)
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    for _attempt in range(5):
        name, orphan_dirs, sleeper = _plant_orphan(dead_pid)
        removed = manager.cleanup_orphans()
        if any(name in r for r in removed):
            break
        # Not reported by our sweep: another process's (every gateway that starts sweeps; the
        # other pytest-xdist worker starts many) took it first. It must be gone all the same
        # (wait raises if nobody killed it), then plant another.
        sleeper.wait(timeout=10)
        assert not any(d.exists() for d in orphan_dirs.values())
    else:
        pytest.fail("every planted orphan was swept by another process before ours")
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert not any(d.exists() for d in orphan_dirs.values())


def test_a_temp_dir_removed_during_the_sweep_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process removes a dead gateway's temp dir between the sweep's listing and its
    checks (every gateway start sweeps; two pytest-xdist workers hit it): the sweep goes on,
    so a gateway's start does not fail on it. The removal is timed by a patched Path.owner."""
    import tempfile

    from gateway.sandbox import base

    if os.geteuid() != 0:
        pytest.skip("the sweep removes root's temp dirs only")
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a live pid
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    gone = tmp_path / f"symbi-seccomp-{dead}-gone"
    left = tmp_path / f"symbi-in-{dead}-left"
    gone.mkdir()
    left.mkdir()
    real_owner = Path.owner

    def racing_owner(self: Path) -> str:
        if self.name == gone.name:
            self.rmdir()  # the other process's removal lands between is_dir() and owner()
        return real_owner(self)

    monkeypatch.setattr(Path, "owner", racing_owner)
    assert base.sweep_temp_dirs() == [f"temp dir {left.name}"]
    assert not left.exists() and not gone.exists()
