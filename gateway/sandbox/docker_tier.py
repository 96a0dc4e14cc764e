"""Tier 1 (Docker, runc) and tier 2 (gVisor: Docker with ``runtime=runsc``).

Containers are made with the Docker SDK for Python: no network, read-only root, a
size-capped tmpfs ``/tmp``, all capabilities dropped, no-new-privileges, uid/gid 65534,
memory (= memory+swap), CPU and pids limits, no log driver (output is read from the
attach stream and capped here, so a flood never reaches the disk). Every container is
labelled ``symbi.sandbox=1`` plus its owner (``host:pid``) so orphans can be found.

The image is the skeleton ``setup-sandbox.sh`` imports (no registry pull); the host's
``/usr`` is bind-mounted read-only into it. This gVisor (2022) needs ``--network=none``
(set as a runtime arg when registered) and counts its own threads in the pids cgroup, so
the gVisor tier never uses a pids limit below 512 and relies on the memory limit too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.compat import raw_socket
from gateway.config.sections import sandbox_network_refusal
from gateway.errors import SandboxError, SandboxInterrupted, SandboxUnavailable

from .base import (
    INPUT_MOUNT,
    NOBODY,
    SANDBOX_ENV,
    InputDir,
    SandboxTier,
    masked_paths,
    owner_tag,
    pid_alive,
    prologue_argv,
    read_only_binds,
)
from .cgroups import read_kv
from .docker_api import (
    Reclaims,
    answer_lost,
    container_end,
    container_name,
    docker_errors,
    docker_knows,
    events_refusal,
    remove_container,
    runsc_delete,
    runsc_ids,
    runsc_orphans,
    runsc_refusal,
    sandbox_failure,
)
from .docker_api import docker_client as docker_client  # the gateway and tests import it from here
from .output import CappedBuffer, TrailerBuffer, captured, pump_docker_socket
from .types import (
    LABEL,
    LABEL_OWNER,
    KilledReason,
    Limits,
    RunCancel,
    SandboxRequest,
    SandboxResult,
    cancel_hook,
)

RUNSC_MIN_PIDS = 512


class _Stopper:
    """Kills one container once, from any thread; ``reasons`` holds why (the first stop)."""

    def __init__(self, client: Any, cid: str) -> None:
        self.client, self.cid = client, cid
        self.reasons: list[KilledReason] = []

    def __call__(self, reason: KilledReason) -> None:
        # Called from the attach pump on an output flood: kill on another thread so
        # the pump keeps draining (runsc's kill can wait on a blocked stdout pipe).
        if not self.reasons:
            self.reasons.append(reason)
            threading.Thread(target=self._kill, name="sandbox-kill", daemon=True).start()

    def _kill(self) -> None:
        with contextlib.suppress(Exception):  # it already exited: nothing to stop
            self.client.api.kill(self.cid)


def _stdio_mounts(dirs: list[str], hidden: Sequence[str]) -> list[str]:
    """Read-only binds of the server's own directories, with the gateway's files masked."""
    argv: list[str] = []
    for d in dirs:
        argv += ["-v", f"{d}:{d}:ro"]
    for path, is_dir in masked_paths(dirs, hidden):  # the gateway's own files: never visible
        # --mount (not --tmpfs) so it is ordered after the bind that holds it
        argv += (
            ["--mount", f"type=tmpfs,destination={path},tmpfs-size=4096,tmpfs-mode=0555"]
            if is_dir
            else ["-v", f"/dev/null:{path}:ro"]
        )
    return argv


class DockerTier(SandboxTier):
    """Docker with runc. ``runtime`` selects the OCI runtime (``runsc`` for gVisor)."""

    name = "docker"
    runtime = "runc"

    def __init__(self, image: str) -> None:
        super().__init__()
        self.image = image
        self.reclaims = Reclaims()  # lost creates' containers, looked for off the call's path

    # -- availability -------------------------------------------------------------------
    def _probe(self, deep: bool) -> tuple[bool, str]:
        try:
            client = docker_client()
        except SandboxUnavailable as e:
            return False, e.message + " (run scripts/setup-sandbox.sh)"
        info = client.info()
        runtimes = info.get("Runtimes") or {}
        if self.runtime not in runtimes:
            return False, f"Docker has no {self.runtime!r} runtime registered (run scripts/setup-sandbox.sh)"
        refusal = self.runtime_refusal(runtimes)
        if refusal is not None:
            return False, refusal
        try:
            client.images.get(self.image)
        except Exception:  # noqa: BLE001 - ImageNotFound or an API error: either way not usable
            return False, f"image {self.image!r} missing (run scripts/setup-sandbox.sh)"
        refused = events_refusal(client.api)  # every post-mortem reads them (container_end)
        if refused is not None:
            return False, refused
        label = f"Docker {info.get('ServerVersion', '?')}, runtime {self.runtime}"
        if not deep:
            return True, label
        r = self.run(SandboxRequest(command=("/bin/true",)), Limits(timeout_s=30))
        if r.exit_code != 0:
            return (
                False,
                f"probe container failed (exit {r.exit_code}): {r.stderr.decode(errors='replace')[-200:]}",
            )
        return True, label

    def pids_limit(self, limits: Limits) -> int:
        return limits.pids

    def runtime_refusal(self, runtimes: dict[str, Any]) -> str | None:
        """Why the registered runtime may not be used (runc: any registration is)."""
        return None

    # -- run ----------------------------------------------------------------------------
    def _host_config(self, client: Any, limits: Limits, binds: list[tuple[str, str]]) -> Any:
        mem = limits.memory_mb * 1024 * 1024
        return client.api.create_host_config(
            runtime=self.runtime,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            mem_limit=mem,
            memswap_limit=mem,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=self.pids_limit(limits),
            ipc_mode="private",
            binds=[f"{src}:{dst}:ro" for src, dst in [("/usr", "/usr"), *binds]],
            log_config={"type": "none", "config": {}},
        )

    def create(
        self,
        client: Any,
        argv: list[str],
        env: Mapping[str, str],
        *,
        stdin_open: bool,
        limits: Limits,
        binds: list[tuple[str, str]] | None = None,
    ) -> str:
        """Create (not start) one locked-down container; returns its id. If Docker's answer is
        lost, the container it may have made anyway is found by its unique name and removed."""
        name = container_name()
        try:
            return str(
                client.api.create_container(
                    self.image,
                    argv,
                    name=name,
                    environment={**SANDBOX_ENV, **env},
                    working_dir="/tmp",
                    user=f"{NOBODY}:{NOBODY}",
                    stdin_open=stdin_open,  # implies StdinOnce: EOF when we half-close
                    tty=False,
                    labels={LABEL: "1", LABEL_OWNER: owner_tag()},
                    host_config=self._host_config(client, limits, binds or []),
                )["Id"]
            )
        except Exception as e:
            if answer_lost(e):
                self.reclaims.start(name)  # the call fails now; close awaits the look
            raise SandboxError(f"cannot create the {self.name} container: {e}") from e

    @staticmethod
    def attach(client: Any, cid: str, *, with_stdin: bool) -> Any:
        """The raw attach socket (before start, so no output is missed)."""
        params = {"stdout": 1, "stderr": 1, "stream": 1, **({"stdin": 1} if with_stdin else {})}
        sock = client.api.attach_socket(cid, params=params)
        return raw_socket(sock)

    def run(
        self, request: SandboxRequest, limits: Limits, *, cancel: RunCancel | None = None
    ) -> SandboxResult:
        client = docker_client()
        start = time.monotonic()
        with InputDir(request.files) as inputs:
            binds = [(str(inputs.path), INPUT_MOUNT)] if inputs.path else []
            argv = prologue_argv(request.argv(), inputs.path is not None)
            cid = self.create(
                client, argv, request.env, stdin_open=request.stdin is not None, limits=limits, binds=binds
            )
            try:
                with docker_errors(f"the {self.name} sandbox call"):
                    raw = self.attach(client, cid, with_stdin=request.stdin is not None)
                    return self.execute(
                        client, cid, raw, request.stdin, limits, start, started=False, cancel=cancel
                    )
            finally:
                self.remove(cid)

    def execute(
        self,
        client: Any,
        cid: str,
        raw: Any,
        payload: bytes | None,
        limits: Limits,
        start: float,
        *,
        started: bool,
        trailer: bool = False,
        cancel: RunCancel | None = None,
    ) -> SandboxResult:
        """Feed ``payload`` on stdin, (start,) enforce the time limit, collect, classify.

        ``trailer``: a warm-pool runner reports the exit code at the end of stderr, so a
        clean exit is known at EOF without waiting for Docker's exit event.
        """
        stop = _Stopper(client, cid)
        kind = TrailerBuffer if trailer else CappedBuffer
        out, err = (
            kind(limits.output_bytes, lambda: stop("output")),
            kind(limits.output_bytes, lambda: stop("output")),
        )
        pump = pump_docker_socket(raw, out, err, payload)
        if not started:
            try:
                client.api.start(cid)
            except Exception as e:
                raise SandboxError(f"cannot start the {self.name} container: {e}") from e
        with docker_errors(f"the {self.name} sandbox call"), cancel_hook(cancel, lambda: stop("cancelled")):
            code = self._wait_for_exit(stop, pump, out, err, limits)
            killed = self._killed_reason(stop, code)
        return captured(out, err, exit_code=code, killed=killed, tier=self.name, start=start)

    def _wait_for_exit(
        self, stop: _Stopper, pump: threading.Thread, out: CappedBuffer, err: CappedBuffer, limits: Limits
    ) -> int:
        """The exit code, stopped at the time limit; a warm runner's clean exit is its trailer's."""
        timer = threading.Timer(limits.timeout_s, lambda: stop("timeout"))
        timer.daemon = True
        timer.start()
        fast: int | None = None
        if isinstance(err, TrailerBuffer) and isinstance(out, TrailerBuffer):
            pump.join(timeout=limits.timeout_s + 30)
            codes = {out.exit_code(), err.exit_code()}
            fast = codes.pop() if len(codes) == 1 and not pump.is_alive() else None
        try:
            status = (
                {"StatusCode": fast}
                if fast == 0 and not stop.reasons
                else stop.client.api.wait(stop.cid, timeout=limits.timeout_s + 30)
            )
        except Exception as e:
            stop("timeout")
            raise sandbox_failure(f"waiting for the {self.name} container to stop", e) from e
        finally:
            timer.cancel()
        pump.join(timeout=2.0)
        code = int(status.get("StatusCode", -1))
        if fast is not None and not stop.reasons:
            code = fast  # the payload's code (the runner exits with it too)
        return code

    def _killed_reason(self, stop: _Stopper, code: int) -> KilledReason:
        """Why the run ended: our own stop first, else the memory or pids limit's kill.

        A run that did not exit 0 on its own is checked against Docker first: a container
        another party removed (an operator, another gateway's sweep) gives no result, whatever our
        own stops say; one another party killed (its ``kill`` event) gives none when we did not
        stop it ourselves. The removal's SIGKILL exits 137 like the memory limit's, and our time
        limit can fire while a slow removal (a runsc teardown on a loaded host) is still killing
        the container. (A program that answers another party's SIGTERM with exit 0 is not seen.)
        """
        if code == 0 and not stop.reasons:  # a clean exit is the payload's own: no post-mortem
            return "none"
        state = stop.client.api.inspect_container(stop.cid)["State"]  # 404: removed under the call
        # killed by a removal that is not ours ("dead": one whose delete then failed)
        if state.get("Status") in ("removing", "dead"):
            raise SandboxInterrupted(f"the {self.name} container was removed while the call ran")
        if stop.reasons:
            return stop.reasons[0]
        oom, other = container_end(stop.client.api, stop.cid, code)
        if other is not None:
            raise SandboxInterrupted(f"the {self.name} container {other} while the call ran (no result)")
        # (ours are in ``stop.reasons``; a SIGKILL nobody else sent is the limit's: container_end)
        if state.get("OOMKilled") or oom:
            return "memory"
        if self._pids_hit(stop.cid):
            return "pids"
        return "none"

    @staticmethod
    def _pids_hit(cid: str) -> bool:
        for base in (
            Path("/sys/fs/cgroup/pids/docker") / cid,
            Path("/sys/fs/cgroup/system.slice") / f"docker-{cid}.scope",
        ):
            if read_kv(base / "pids.events").get("max", 0) > 0:
                return True
        return False

    def remove(self, cid: str) -> bool:
        """Force-remove a container (and runsc state Docker lost): True once it is gone; never
        raises (a real failure is logged with its id, see ``remove_container``)."""
        gone = remove_container(cid)
        if self.runtime == "runsc":
            runsc_delete(cid)
        return gone

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
        if network:  # refused at load too (Config): the same rule, kept here as defence
            why = sandbox_network_refusal("gvisor" if self.runtime == "runsc" else "docker")
            raise SandboxUnavailable(f"sandbox_network: {why}")
        cli = shutil.which("docker")
        if cli is None:
            raise SandboxUnavailable("the docker CLI is not installed")
        argv = [cli, "run", "-i", "--rm", *self._locked_down_flags(limits)]
        argv += _stdio_mounts(read_only_binds(command, args, cwd), hidden)
        for k, v in SANDBOX_ENV.items():
            if k not in env:
                argv += ["-e", f"{k}={v}"]
        # a name alone: the value comes from the CLI's environment (the launcher's, root's), never
        # from its command line, which any user reads (/proc/PID/cmdline)
        for k in env:
            argv += ["-e", k]
        argv += ["-w", str(Path(cwd).resolve()) if cwd else "/tmp", self.image, command, *args]
        return argv

    def _locked_down_flags(self, limits: Limits) -> list[str]:
        """``docker run`` flags for the same lock-down and limits as ``_host_config``."""
        mem = f"{limits.memory_mb}m"
        return [
            f"--runtime={self.runtime}",
            "--network=none",
            "--read-only",
            "--tmpfs",
            f"/tmp:rw,nosuid,nodev,size={limits.tmpfs_mb}m,mode=1777",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            f"{NOBODY}:{NOBODY}",
            "--memory",
            mem,
            "--memory-swap",
            mem,
            "--cpus",
            str(limits.cpus),
            "--pids-limit",
            str(self.pids_limit(limits)),
            "--log-driver",
            "none",
            "--label",
            f"{LABEL}=1",
            "--label",
            f"{LABEL_OWNER}={owner_tag()}",
            "-v",
            "/usr:/usr:ro",
        ]

    # -- housekeeping -------------------------------------------------------------------
    def _ours(self) -> list[Any]:
        try:
            client = docker_client()
            # another gateway on this host may remove its container between the list and the
            # inspect docker-py makes of each: skip those rather than fail the whole sweep
            return list(
                client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)
            )
        except SandboxUnavailable:
            return []

    def cleanup_orphans(self) -> list[str]:
        removed: list[str] = []
        host = owner_tag().split(":")[0]  # dockerd is local: an owner not alive here is gone
        for c in self._ours():
            if (c.attrs.get("HostConfig") or {}).get("Runtime", "runc") != self.runtime:
                continue
            owner = (c.labels or {}).get(LABEL_OWNER, "")
            h, _, pid = owner.partition(":")
            if h == host and pid.isdigit() and pid_alive(int(pid)):
                continue  # a live gateway's (ours included): not an orphan
            self.remove(c.id)
            removed.append(f"container {c.short_id}")
        if self.runtime == "runsc":
            removed += [f"runsc state {i[:12]}" for i in runsc_orphans()]
        return removed

    def _owned_by_live_other(self, c: Any) -> bool:
        host, _, pid = (c.labels or {}).get(LABEL_OWNER, "").partition(":")
        return (
            host == owner_tag().split(":")[0]
            and pid.isdigit()
            and int(pid) != os.getpid()
            and pid_alive(int(pid))
        )

    def leftovers(self) -> list[str]:
        """Containers of this process or of dead ones (another live gateway's are not ours)."""
        out = [
            f"container {c.short_id}"
            for c in self._ours()
            if (c.attrs.get("HostConfig") or {}).get("Runtime", "runc") == self.runtime
            and not self._owned_by_live_other(c)
        ]
        if self.runtime == "runsc":
            out += [f"runsc state {i[:12]}" for i in runsc_ids() if not docker_knows(i)]
        return out


class GvisorTier(DockerTier):
    """gVisor (runsc, ptrace platform) through Docker; pids limit never below 512."""

    name = "gvisor"  # type: ignore[assignment]
    runtime = "runsc"

    def pids_limit(self, limits: Limits) -> int:
        return max(limits.pids, RUNSC_MIN_PIDS)

    def runtime_refusal(self, runtimes: dict[str, Any]) -> str | None:
        return runsc_refusal(runtimes)
