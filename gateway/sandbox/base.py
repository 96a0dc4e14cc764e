"""The interface every tier implements, and helpers they share."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from gateway.errors import SandboxUnavailable

from .types import WORKDIR, Limits, RunCancel, SandboxRequest, SandboxResult, Tier

NOBODY = 65534
INPUT_MOUNT = "/in"  # read-only mount of the run's input files, copied to WORKDIR first
SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
AVAILABILITY_TTL_S = 30.0


def owner_tag() -> str:
    """Who started a container: orphans are those whose owner process is gone."""
    return f"{socket.gethostname()}:{os.getpid()}"


def prologue_argv(argv: list[str], with_inputs: bool) -> list[str]:
    """Wrap ``argv`` in a tiny shell step: make the workdir, copy inputs, cd, exec."""
    copy = f"cp -R {INPUT_MOUNT}/. {WORKDIR}/ && " if with_inputs else ""
    script = f'mkdir -p {WORKDIR} && {copy}cd {WORKDIR} && exec "$@"'
    return ["/bin/sh", "-c", script, "sh", *argv]


_TEMP_RE = re.compile(r"^symbi-(?:in|seccomp)-(\d+)-")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp_dirs() -> list[str]:
    """Remove input / seccomp temp dirs whose gateway process is gone (crash leftovers)."""
    removed: list[str] = []
    tmp = Path(tempfile.gettempdir())
    try:
        entries = list(tmp.iterdir())
    except OSError:
        return removed
    for d in entries:
        m = _TEMP_RE.match(d.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        try:
            if d.is_symlink() or not d.is_dir() or d.owner() != "root":
                continue
        except OSError:  # removed since the listing (by its gateway or another's sweep): not ours
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"temp dir {d.name}")
    return removed


class InputDir:
    """A host directory with a run's input files, readable by the sandbox's gid 65534 only."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self.path: Path | None = None
        if not files:
            return
        self.path = Path(tempfile.mkdtemp(prefix=f"symbi-in-{os.getpid()}-"))
        try:
            for name, content in files.items():
                target = self.path / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            for dirpath, _dirnames, filenames in os.walk(self.path):
                self._own(Path(dirpath), 0o750)
                for f in filenames:
                    self._own(Path(dirpath) / f, 0o640)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _own(p: Path, mode: int) -> None:
        os.chmod(p, mode)
        if os.geteuid() == 0:
            os.chown(p, 0, NOBODY)

    def close(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SandboxTier(ABC):
    """One isolation tier. ``run`` raises SandboxUnavailable when the tier cannot run here."""

    name: Tier

    def __init__(self) -> None:
        self._avail: tuple[float, bool, tuple[bool, str]] | None = None

    def available(self, *, refresh: bool = False, deep: bool = False) -> tuple[bool, str]:
        """(usable, reason), cached for a few seconds.

        Shallow (default, before each run): the prerequisites are there (binaries, daemon,
        runtime, image, cgroups, seccomp filter). ``deep`` (doctor): also starts a real
        sandbox. A run that fails anyway raises SandboxError: never a silent downgrade.
        """
        now = time.monotonic()
        c = self._avail
        if refresh or c is None or now - c[0] > AVAILABILITY_TTL_S or (deep and not c[1]):
            try:
                result = self._probe(deep)
            except Exception as e:  # noqa: BLE001 - a crashing probe means "not available", with why
                result = (False, f"{type(e).__name__}: {e}")
            self._avail = (now, deep, result)
            return result
        return c[2]

    def require(self) -> None:
        """Raise SandboxUnavailable with the reason unless the tier is usable."""
        ok, reason = self.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox tier {self.name!r} is unavailable: {reason}")

    @abstractmethod
    def _probe(self, deep: bool) -> tuple[bool, str]: ...

    @abstractmethod
    def run(
        self, request: SandboxRequest, limits: Limits, *, cancel: RunCancel | None = None
    ) -> SandboxResult:
        """Run one request to completion within ``limits`` (or until ``cancel``); leaves
        nothing behind."""

    @abstractmethod
    def stdio_argv(
        self,
        command: str,
        args: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        *,
        network: bool,
        limits: Limits,
        hidden: Sequence[str] = (),
    ) -> list[str]:
        """argv that runs a long-lived stdio process inside this tier (stdin/stdout kept).

        ``env``'s values are on no command line (any user reads ``/proc/PID/cmdline``): the
        caller starts the argv with ``env`` in its environment too (the docker CLI takes them
        from there).

        ``hidden``: the gateway's own paths (data dir, keys, config) that must never be
        visible inside, even when a bound folder contains them (see ``masked_paths``)."""

    @abstractmethod
    def cleanup_orphans(self) -> list[str]:
        """Remove what dead gateway processes left behind; returns what was removed."""

    @abstractmethod
    def leftovers(self) -> list[str]:
        """What of ours still exists (containers, cgroups, runtime state): for checks."""


# never bound into a sandbox whole: the host's tree, and the folders every user shares (a
# script right in /tmp bound all of /tmp: others' files and the Unix sockets there, such as
# every gateway's agents' socket, which a server without network could then dial)
UNEXPOSABLE = frozenset(
    {"/", "/etc", "/root", "/home", "/var", "/proc", "/sys", "/dev", "/tmp", "/var/tmp", "/run", "/dev/shm"}
)


def refuse_exposing(folder: str) -> None:
    """``SandboxUnavailable`` when ``folder`` (resolved) is one a sandbox may not see whole."""
    d = str(Path(folder).resolve())
    if d in UNEXPOSABLE:
        raise SandboxUnavailable(f"refusing to expose {d} to a sandboxed server")


def read_only_binds(command: str, args: list[str], cwd: str | None) -> list[str]:
    """Host dirs a wrapped stdio server needs read-only: its cwd and the dirs of any
    absolute-path command/arguments that exist outside /usr (e.g. a script or a venv)."""
    out: list[str] = []
    candidates = [command, *args]
    for c in candidates:
        if not c.startswith("/") or c.startswith("/usr/"):
            continue
        p = Path(c)
        if p.is_file():
            d = str(p.resolve().parent)
            if p.parent.name == "bin":  # a venv or prefix: bind the whole prefix
                d = str(p.parent.parent)
            out.append(d)
    if cwd:
        out.append(str(Path(cwd).resolve()))
    uniq: list[str] = []
    for d in sorted(set(out), key=len):
        refuse_exposing(d)
        if not any(d == u or d.startswith(u + "/") for u in uniq):
            uniq.append(d)
    return uniq


def masked_paths(binds: Sequence[str], hidden: Sequence[str]) -> list[tuple[str, bool]]:
    """(path, is_dir) of every hidden path that lies inside a bound folder: the tier mounts an
    empty tmpfs over a folder and /dev/null over a file, so the sandbox sees neither.

    Raises:
        SandboxUnavailable: a bound folder is itself inside (or is) a hidden folder.
    """
    out: list[tuple[str, bool]] = []
    for h in hidden:
        hp = Path(h).resolve()
        for b in binds:
            bp = Path(b).resolve()
            if hp.is_dir() and (bp == hp or hp in bp.parents):
                raise SandboxUnavailable(f"refusing to expose {bp}: it is inside the gateway's private {hp}")
            if hp.exists() and bp in hp.parents:
                out.append((str(hp), hp.is_dir()))
                break
    dirs = [Path(p) for p, is_dir in out if is_dir]
    # a file inside a masked folder is gone with it (a mount point there would show its name)
    return sorted({(p, d) for p, d in out if not any(x in Path(p).parents for x in dirs)})


def shell_join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
