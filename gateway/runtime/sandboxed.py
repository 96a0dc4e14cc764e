"""The handle of a hosted agent's sandbox (a cgroup, or a Docker container) that the
supervisor (``gateway.runtime.hosted``) kills, measures and removes a run with."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_logger = logging.getLogger("symbi.runtime.hosted")


class Sandboxed:
    """What a run's sandbox exposes to the supervisor (cgroup or container)."""

    # what the launcher's environment must add: values its tier keeps off the command line
    launch_env: dict[str, str] = {}  # read only here; an instance sets its own

    def kill(self) -> None: ...

    def memory_peak_mb(self) -> float:
        return 0.0

    def end_cause(self, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        """How a run that exited ``exit_code`` ended: (the kernel's OOM kill at its memory
        budget, another party's kill or an end that cannot be told from one, said readably).
        ``ours``: the gateway stopped it (another party's kill is not asked: unused then)."""
        return False, None

    def remove(self) -> None: ...


class Cgroup(Sandboxed):
    def __init__(self, cg: Any) -> None:
        self.cg = cg

    def kill(self) -> None:
        self.cg.kill_all(deadline_s=1.0)

    def memory_peak_mb(self) -> float:
        from gateway.sandbox import cgroups

        return cgroups.memory_peak_mb(self.cg)

    def end_cause(self, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        return bool(self.cg.oom_killed()), None

    def remove(self) -> None:
        self.cg.remove()


class Container(Sandboxed):
    def __init__(self, name: str, launch_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.launch_env = dict(launch_env or {})  # ``docker run -e NAME`` reads them from here

    def _container(self) -> Any:
        from gateway.sandbox.docker_tier import docker_client

        return docker_client().containers.get(self.name)

    def kill(self) -> None:
        try:
            self._container().kill()
        except Exception as e:  # noqa: BLE001 - already gone
            _logger.debug("container %s not killed: %s", self.name, e)

    def end_cause(self, exit_code: int | None, ours: bool = False) -> tuple[bool, str | None]:
        """The kernel's OOM kill (inspect's OOMKilled, or Docker's events once ``--rm`` removed
        the container), or another party's kill (its ``kill`` event): never 137 alone, which
        an operator's ``docker kill`` exits with too. Blocks (Docker's events, up to
        ``EVENTS_WAIT_S``): the runtime asks from a worker thread."""
        if exit_code in (0, 125, 126, 127):
            # a clean exit, or the docker CLI's (125-127: no container may exist to ask about,
            # whose events would wait out their bound); any other exit may follow another
            # party's kill (a SIGTERM the agent answers with exit 1) or an OOM kill of a child
            return False, None
        from gateway.errors import GatewayError
        from gateway.sandbox.docker_api import container_end, docker_client

        try:
            if self._container().attrs["State"].get("OOMKilled"):
                return True, None
        except Exception as e:  # noqa: BLE001 - removed by --rm already: its events say how
            _logger.debug("container %s not inspected: %s", self.name, e)
        if ours:  # stopped by the gateway: its events (up to EVENTS_WAIT_S) would say our kill
            return False, None
        try:  # (the name filters the events as the id does; each run's name is its own)
            oom, other = container_end(docker_client().api, self.name, exit_code)
        except GatewayError as e:  # the daemon refused the query: an end that cannot be told
            return False, f"failure: its end cannot be told ({e})"
        return oom, None if other is None else f"failure: the container {other}"

    def remove(self) -> None:
        try:
            self._container().remove(force=True)
        except Exception as e:  # noqa: BLE001 - --rm removed it
            _logger.debug("container %s not removed: %s", self.name, e)


def root_device() -> str | None:
    """/dev/NAME of the root file system's block device (for docker's I/O limits)."""
    dev = os.stat("/").st_dev
    try:
        uevent = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/uevent").read_text()
    except OSError:
        return None
    for line in uevent.splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.split("=", 1)[1]
    return None


def kill_run(proc: Any, box: Sandboxed) -> None:
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    box.kill()


def docker_options(
    cname: str,
    socket: tuple[str, str],
    ro: list[str],
    masked: Iterable[tuple[str, bool]],
    disk_io_mbps: int,
) -> list[str]:
    """``docker run`` options of a hosted run: its name, the gateway's socket, the root device's
    I/O limits, the read-only paths, and the covers over what it must not see."""
    extra = ["--name", cname, "-v", f"{socket[0]}:{socket[1]}"]
    dev = root_device()
    if dev is not None:
        extra += [
            "--device-read-bps",
            f"{dev}:{disk_io_mbps}mb",
            "--device-write-bps",
            f"{dev}:{disk_io_mbps}mb",
        ]
    for p in ro:
        extra += ["-v", f"{p}:{p}:ro"]
    # docker orders mounts by depth itself: these covers go over the binds that hold them
    for path, is_dir in dict.fromkeys(masked):
        extra += (
            ["--mount", f"type=tmpfs,destination={path},tmpfs-size=4096,tmpfs-mode=0555"]
            if is_dir
            else ["-v", f"/dev/null:{path}:ro"]
        )
    return extra
