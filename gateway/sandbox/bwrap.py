"""The light tier: bubblewrap.

Launch chain (one ``/bin/sh`` step, as root): put ``$$`` into the run's cgroups (memory,
pids, CPU), open the seccomp BPF on fd 9, then ``exec setpriv`` to the real uid/gid 65534
with no capabilities and ``exec bwrap``. So the payload is uid 65534 both inside its user
namespace *and* on the host (a root launcher would map it to host root, and the kernel
ignores RLIMIT_NPROC for root), with every namespace unshared, only ``/usr`` bound
read-only, a size-capped tmpfs ``/tmp``, and the seccomp filter from ``seccomp_bpf.py``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.errors import SandboxError, SandboxUnavailable

from . import cgroups, seccomp_bpf
from .base import (
    INPUT_MOUNT,
    NOBODY,
    SANDBOX_ENV,
    InputDir,
    SandboxTier,
    masked_paths,
    prologue_argv,
    read_only_binds,
    shell_join,
)
from .output import CappedBuffer, captured, feed_stdin, pump_fd
from .types import KilledReason, Limits, RunCancel, SandboxRequest, SandboxResult, cancel_hook

SECCOMP_FD = 9
ENV_FD = 8  # the sandbox's environment, as bwrap --args (never on a command line)
LAUNCH_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class SeccompFilters:
    """The two BPF programs (with / without network), built once per process."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def path(self, allow_network: bool) -> Path:
        with self._lock:
            if self._dir is None:
                d = Path(tempfile.mkdtemp(prefix=f"symbi-seccomp-{os.getpid()}-"))
                try:
                    for net in (False, True):
                        out = d / ("net.bpf" if net else "nonet.bpf")
                        seccomp_bpf.build(str(out), net)
                        if out.stat().st_size == 0:
                            raise OSError(f"{out.name}: empty BPF program")
                except OSError as e:
                    shutil.rmtree(d, ignore_errors=True)
                    raise SandboxUnavailable(
                        f"cannot build the seccomp filter (is libseccomp installed?): {e}"
                    ) from e
                self._dir = d
                atexit.register(self.close)  # normal exit without close(); crashes: sweep_temp_dirs
            return self._dir / ("net.bpf" if allow_network else "nonet.bpf")

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None


class BwrapTier(SandboxTier):
    """bubblewrap + user namespace (uid 65534) + seccomp + cgroup limits."""

    name = "bwrap"

    def __init__(self) -> None:
        super().__init__()
        self.seccomp = SeccompFilters()
        self._stdio_cgroups: list[cgroups.RunCgroup] = []

    # -- availability -------------------------------------------------------------------
    def _probe(self, deep: bool) -> tuple[bool, str]:
        for tool in ("bwrap", "setpriv"):
            if shutil.which(tool) is None:
                return False, f"{tool} not installed (apt-get install bubblewrap)"
        if os.geteuid() != 0:
            return False, "the bwrap tier needs root to create cgroups and drop to uid 65534"
        try:
            self.seccomp.path(False)
        except SandboxUnavailable as e:
            return False, e.message
        cgroups.check()
        version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True, check=False)
        label = "bubblewrap " + (version.stdout.strip().split() or ["?"])[-1]
        if not deep:
            return True, label
        r = self.run(SandboxRequest(command=("/bin/true",)), Limits(timeout_s=10))
        if r.exit_code != 0:
            return False, f"probe run failed (exit {r.exit_code}): {r.stderr.decode(errors='replace')[-200:]}"
        return True, label

    # -- argv ---------------------------------------------------------------------------
    @staticmethod
    def _bwrap_argv(
        *,
        network: bool,
        tmpfs_mb: int,
        ro_binds: list[tuple[str, str]],
        chdir: str,
        masks: Sequence[tuple[str, bool]] = (),
    ) -> list[str]:
        argv = [
            "bwrap",
            "--unshare-all",
            *(["--share-net"] if network else []),
            "--unshare-user",
            "--uid",
            str(NOBODY),
            "--gid",
            str(NOBODY),
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/usr",
            "/usr",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            str(tmpfs_mb * 1024 * 1024),
            "--tmpfs",
            "/tmp",
        ]
        for src, dst in ro_binds:
            argv += ["--ro-bind", src, dst]
        for path, is_dir in masks:  # the gateway's own files inside a bound folder: never visible
            argv += ["--tmpfs", path] if is_dir else ["--ro-bind", "/dev/null", path]
        if network:  # name resolution needs these; still read-only
            for f in ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"):
                if os.path.exists(f):
                    argv += ["--ro-bind", f, f]
        argv += ["--clearenv"]
        for k, v in SANDBOX_ENV.items():
            argv += ["--setenv", k, v]
        argv += ["--chdir", chdir, "--remount-ro", "/", "--seccomp", str(SECCOMP_FD)]
        return argv

    def _launcher(
        self, cg: cgroups.RunCgroup, bpf: Path, bwrap_argv: list[str], env: Mapping[str, str]
    ) -> list[str]:
        """``sh -c`` that joins the cgroups, opens the filter on fd 9 and drops to 65534.

        ``env`` (a server's tokens, an agent's credential) never goes on a command line: any
        user reads ``/proc/PID/cmdline`` (an unsandboxed upstream included). bwrap reads its
        ``--setenv`` pairs from fd 8 (``--args``): a root-only file, opened by the root shell
        and removed before anything else runs."""
        join = " && ".join(f"echo $$ > {shell_join([str(p)])}" for p in cg.procs_files)
        env_args: list[str] = []
        if env:
            fd, name = tempfile.mkstemp(prefix="env-", dir=bpf.parent)  # 0600, in root's 0700 folder
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(b"--setenv\0%s\0%s\0" % (k.encode(), v.encode()) for k, v in env.items()))
            env_file = shell_join([name])
            join = f"exec {ENV_FD}< {env_file} && rm -f {env_file} && {join}"
            env_args = ["--args", str(ENV_FD)]
        # bwrap is pid 1 of the sandbox, of its uid: the payload reads its /proc/1/environ. It
        # starts with PATH only, never the caller's environment (a hosted agent's launcher
        # inherited the gateway's own: its database URLs, its OPENAI_API_KEY)
        full = [
            "env",
            "-i",
            f"PATH={LAUNCH_PATH}",
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            *bwrap_argv[:-2],
            *env_args,
            *bwrap_argv[-2:],
        ]
        script = f'{join} && exec {shell_join(full)} "$@" {SECCOMP_FD}< {shell_join([str(bpf)])}'
        return ["/bin/sh", "-c", script, "symbi-bwrap"]

    # -- run ----------------------------------------------------------------------------
    def run(
        self, request: SandboxRequest, limits: Limits, *, cancel: RunCancel | None = None
    ) -> SandboxResult:
        if shutil.which("bwrap") is None:
            raise SandboxUnavailable("sandbox tier 'bwrap' is unavailable: bubblewrap not installed")
        bpf = self.seccomp.path(False)
        start = time.monotonic()
        with InputDir(request.files) as inputs:
            binds = [(str(inputs.path), INPUT_MOUNT)] if inputs.path else []
            bw = self._bwrap_argv(network=False, tmpfs_mb=limits.tmpfs_mb, ro_binds=binds, chdir="/tmp")
            cg = cgroups.create(limits.memory_mb, limits.pids, limits.cpus)
            try:
                argv = (
                    self._launcher(cg, bpf, bw, request.env)
                    + ["--"]
                    + prologue_argv(request.argv(), inputs.path is not None)
                )
                return self._execute(argv, request.stdin, limits, cg, start, cancel)
            finally:
                cg.remove()

    def _execute(
        self,
        argv: list[str],
        stdin: bytes | None,
        limits: Limits,
        cg: cgroups.RunCgroup,
        start: float,
        cancel: RunCancel | None,
    ) -> SandboxResult:
        stopped: list[KilledReason] = []

        def halt(reason: KilledReason) -> None:
            if not stopped:
                stopped.append(reason)
            cg.kill_all(deadline_s=1.0)

        out, err = (
            CappedBuffer(limits.output_bytes, lambda: halt("output")),
            CappedBuffer(limits.output_bytes, lambda: halt("output")),
        )
        proc = _spawn(argv, piped_stdin=stdin is not None)
        assert proc.stdout is not None and proc.stderr is not None
        threads = [pump_fd(os.dup(proc.stdout.fileno()), out), pump_fd(os.dup(proc.stderr.fileno()), err)]
        proc.stdout.close()
        proc.stderr.close()
        if proc.stdin is not None:
            threads.append(feed_stdin(os.dup(proc.stdin.fileno()), stdin))
            proc.stdin.close()
        try:
            with cancel_hook(cancel, lambda: halt("cancelled")):
                proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            if not stopped:
                stopped.append("timeout")
            cg.kill_all()
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            proc.wait()
        cg.kill_all()  # stragglers (daemonised children) die with the run
        for t in threads:
            t.join(timeout=2.0)
        killed = stopped[0] if stopped else _limit_hit(cg, proc.returncode)
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        return captured(out, err, exit_code=code, killed=killed, tier="bwrap", start=start)

    # -- stdio servers ------------------------------------------------------------------
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
        self.require()
        bpf = self.seccomp.path(network)
        dirs = read_only_binds(command, args, cwd)
        bw = self._bwrap_argv(
            network=network,
            tmpfs_mb=limits.tmpfs_mb,
            ro_binds=[(d, d) for d in dirs],
            chdir=str(Path(cwd).resolve()) if cwd else "/tmp",
            masks=masked_paths(dirs, hidden),
        )
        # The server lives as long as the session: its cgroup is removed by close() or,
        # after a crash, by the next start's orphan sweep (the name carries our pid).
        cg = cgroups.create(limits.memory_mb, limits.pids, limits.cpus)
        self._stdio_cgroups.append(cg)
        return self._launcher(cg, bpf, bw, env) + ["--", command, *args]

    # -- hosted agents (gateway/runtime/hosted.py) ---------------------------------------
    def hosted_argv(
        self,
        command: str,
        args: list[str],
        env: Mapping[str, str],
        *,
        limits: Limits,
        ro_paths: list[str],
        socket: tuple[str, str],
        disk_io_mbps: int | None = None,
        hidden: Sequence[str] = (),
    ) -> tuple[list[str], cgroups.RunCgroup]:
        """argv of a long-running agent process, and its cgroup (the caller removes it).

        No network at all (seccomp refuses AF_INET/AF_INET6); the gateway's Unix socket
        ``socket = (host path, sandbox path)`` is its one way out. ``hidden`` (the gateway's
        own files) stay invisible inside a bound folder, as for stdio servers.
        """
        self.require()
        bpf = self.seccomp.path(False)
        dirs = sorted({*read_only_binds(command, args, None), *ro_paths}, key=len)
        bw = self._bwrap_argv(
            network=False,
            tmpfs_mb=limits.tmpfs_mb,
            ro_binds=[(d, d) for d in dirs],
            chdir="/tmp",
            masks=masked_paths(dirs, hidden),
        )
        at = bw.index("--clearenv")
        bw[at:at] = ["--bind", socket[0], socket[1]]
        cg = cgroups.create(limits.memory_mb, limits.pids, limits.cpus)
        if disk_io_mbps is not None:
            cgroups.throttle_io(cg, disk_io_mbps)
        return self._launcher(cg, bpf, bw, env) + ["--", command, *args], cg

    # -- housekeeping -------------------------------------------------------------------
    def cleanup_orphans(self) -> list[str]:
        return [f"cgroup {n}" for n in cgroups.cleanup_orphans()]

    def close(self) -> None:
        """Remove the cgroups of stdio servers we launched and the BPF files."""
        for cg in self._stdio_cgroups:
            cg.remove()
        self._stdio_cgroups.clear()
        self.seccomp.close()

    def leftovers(self) -> list[str]:
        live = {cg.name for cg in self._stdio_cgroups}
        return [f"cgroup {p}" for p in cgroups.list_ours() if p.name not in live]


def _spawn(argv: list[str], *, piped_stdin: bool) -> subprocess.Popen[bytes]:
    """Start bwrap in a session of its own, with nothing of the gateway's environment."""
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if piped_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": LAUNCH_PATH},
            close_fds=True,
            start_new_session=True,
        )
    except OSError as e:
        raise SandboxError(f"cannot start bwrap: {e}") from e


def _limit_hit(cg: cgroups.RunCgroup, returncode: int) -> KilledReason:
    """Which cgroup limit ended a run the gateway did not stop itself, if any."""
    if cg.oom_killed():
        return "memory"
    if returncode != 0 and cg.pids_limit_hit():
        return "pids"
    return "none"
