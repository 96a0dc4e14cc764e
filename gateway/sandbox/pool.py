"""Warm pool: pre-started, one-shot sandboxes for the Docker tiers (docker, gvisor).

Each pooled container is created with the config's default limits, attached and started,
running a tiny runner that blocks on stdin. A call whose limits equal the pool's takes
one, sends the job (argv, files, stdin, env) as JSON and half-closes; the runner writes
the files into ``/tmp/work``, puts the stdin data on fd 0 and ``exec``s the command, so
the call pays neither container creation nor the runtime's start. A container serves
exactly one call and is then removed (no state crosses calls); a background thread
refills the pool. Calls with other limits, or when the pool is empty, run cold.

bubblewrap needs no pool: a cold start already costs well under 0.1 s.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from gateway.errors import SandboxError, SandboxInterrupted

from .base import SANDBOX_ENV
from .docker_api import REMOVE_DEADLINE_S, docker_client, docker_errors
from .docker_tier import DockerTier
from .types import SANDBOX_PYTHON, WORKDIR, Limits, RunCancel, SandboxRequest, SandboxResult

if TYPE_CHECKING:
    from .manager import SandboxManager

log = logging.getLogger("symbi.sandbox.pool")

# create (30 s client timeout), start (30 s) and the runner's greeting (60 s) each have a
# bound; a close waits this long for a refill in flight before it removes what is left
SPAWN_BOUND_S = 180.0

# The runner is pid 1 of its container: it forks the payload and waits, then appends the
# exit code to stderr (see TrailerBuffer) and exits with it, which ends the container
# and kills anything the payload left running. Python code runs in the forked child of
# this already-started interpreter (a zygote), which skips a second interpreter start.
RUNNER = f"""
import base64, json, os, sys, traceback
os.write(1, b"R")  # ready: the pool hands this container out only after reading it
job = json.loads(sys.stdin.buffer.read())
os.makedirs({WORKDIR!r}, exist_ok=True)
for name, data in job["files"].items():
    path = os.path.join({WORKDIR!r}, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))
os.chdir({WORKDIR!r})
if job["stdin"] is None:
    fd = os.open("/dev/null", os.O_RDONLY)
else:
    tmp = "/tmp/.symbi-stdin"
    with open(tmp, "wb") as f:
        f.write(base64.b64decode(job["stdin"]))
    fd = os.open(tmp, os.O_RDONLY)
    os.unlink(tmp)
os.dup2(fd, 0)
os.close(fd)
pid = os.fork()
if pid == 0:
    os.environ.clear()
    os.environ.update(job["env"])
    if job["code"] is None:
        argv = job["argv"]
        try:
            os.execvpe(argv[0], argv, job["env"])
        except OSError as e:
            sys.stderr.write("sandbox: cannot run %s: %s\\n" % (argv[0], e))
            sys.stderr.flush()
            os._exit(127)
    sys.stdin = open(0, closefd=False)
    sys.argv = ["-c"]
    # ends like `python3 -c`: SystemExit and normal interpreter shutdown (non-daemon
    # threads joined, atexit handlers run, buffers flushed); tracebacks omit this frame
    try:
        exec(compile(job["code"], "<string>", "exec"), {{"__name__": "__main__", "__builtins__": __builtins__}})
    except SystemExit:
        raise
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
rc = os.waitstatus_to_exitcode(status)
rc = 128 - rc if rc < 0 else rc
os.write(1, b"\\0symbi-exit:%d\\0" % rc)
os.write(2, b"\\0symbi-exit:%d\\0" % rc)
os._exit(rc)
"""


def backoff_s(failures: int) -> float:
    """A refill's wait after ``failures`` failed tries in a row: doubling from 1 s, at most 30 s.
    (The exponent is capped: a tier unusable for days counts thousands, and 2.0**1024 raises.)"""
    return min(0.5 * 2.0 ** min(failures, 8), 30.0)


def _await_ready(raw: Any, timeout_s: float = 60.0) -> None:
    """Read the runner's one-byte stdout frame that says its interpreter is up."""
    raw.settimeout(timeout_s)
    try:
        got = b""
        while len(got) < 9:
            chunk = raw.recv(9 - len(got))
            if not chunk:
                raise SandboxError("warm sandbox exited before it was ready")
            got += chunk
    finally:
        raw.settimeout(None)
    if got != b"\x01\x00\x00\x00\x00\x00\x00\x01R":
        raise SandboxError(f"warm sandbox sent an unexpected greeting {got!r}")


class _Warm:
    """One started container waiting for its job."""

    def __init__(self, cid: str, raw: Any) -> None:
        self.cid = cid
        self.raw = raw


class WarmPool:
    """``size`` ready containers per Docker tier, refilled in the background.

    Every Docker tier gets a refill thread, usable or not when the pool starts: each thread
    checks its tier (shallow, cached probe) before a spawn and waits with back-off while it is
    unusable, so a probe that failed once (a slow daemon under load) costs a delay, not the
    pool for the gateway's life.

    Every container the pool creates is in ``_live`` until its removal has returned, so
    ``close`` can remove whatever is left: idle ones, a call's in flight, a reaper's. A call
    whose container ``close`` removed (``_cut``) fails with SandboxInterrupted, never a result.
    """

    def __init__(self, manager: SandboxManager, size: int) -> None:
        self.size = size
        self.limits: Limits = manager.limits()
        self.tiers: dict[str, DockerTier] = {
            n: t for n, t in manager.tiers.items() if isinstance(t, DockerTier)
        }
        self._ready: dict[str, deque[_Warm]] = {n: deque() for n in self.tiers}
        self._last: dict[str, bool] = {n: False for n in self.tiers}
        self._live: dict[str, str] = {}  # container id -> tier name
        self._calls: set[str] = set()  # containers serving a call now
        self._cut: set[str] = set()  # of those, the ones close removed under their call
        self._cond = threading.Condition()
        self._closed = False
        self._reapers: list[threading.Thread] = []
        self._threads = [
            threading.Thread(target=self._refill, args=(n,), name=f"sandbox-pool-{n}", daemon=True)
            for n in self.tiers
        ]
        for t in self._threads:
            t.start()

    # -- filling ------------------------------------------------------------------------
    def _spawn(self, name: str) -> _Warm:
        tier, client = self.tiers[name], docker_client()
        cid = tier.create(
            client, [SANDBOX_PYTHON, "-I", "-c", RUNNER], {}, stdin_open=True, limits=self.limits
        )
        with self._cond:
            self._live[cid] = name
        try:
            raw = tier.attach(client, cid, with_stdin=True)
            client.api.start(cid)
            _await_ready(raw)
        except BaseException:
            self._remove(cid)
            raise
        return _Warm(cid, raw)

    def _remove(self, cid: str) -> None:
        with self._cond:
            name = self._live.get(cid)
        if name is not None:
            self.tiers[name].remove(cid)
            with self._cond:
                self._live.pop(cid, None)

    def _refill(self, name: str) -> None:
        failures, usable = 0, True
        while True:
            with self._cond:
                while not self._closed and len(self._ready[name]) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
            usable = self._usable(name, usable)
            with self._cond:  # (the probe can take a while: a close meanwhile starts nothing)
                if self._closed:
                    return
            try:
                warm = self._spawn(name) if usable else None
            except Exception as e:  # noqa: BLE001 - keep serving cold; retry with backoff
                log.warning("warm pool: cannot start a %s sandbox: %s", name, e)
                warm = None
            if warm is None:
                failures += 1
                with self._cond:  # a close wakes the back-off
                    if not self._closed:
                        self._cond.wait(backoff_s(failures))
                continue
            failures = 0
            with self._cond:
                if not self._closed:
                    self._ready[name].append(warm)
                    self._cond.notify_all()
                    continue
            self._remove(warm.cid)  # closed while it started
            return

    def _usable(self, name: str, was: bool) -> bool:
        """The tier's shallow probe (its refill thread's; ``was``: its last answer); a change
        is logged once. After a failure it probes afresh (not the cached answer), so a recovery
        shows at the next retry."""
        ok, reason = self.tiers[name].available(refresh=not was)
        if was and not ok:
            log.warning(
                "warm pool: tier %s is not usable (%s): its calls start cold until it is", name, reason
            )
        elif ok and not was:
            log.info("warm pool: tier %s is usable again: pooling it", name)
        return ok

    def wait_ready(self, tier: str, timeout_s: float = 30.0) -> bool:
        """Block until ``tier`` has a full pool (benchmarks, tests); False on timeout (a tier
        whose probe fails now may pass later, so that is no reason to stop waiting)."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while tier in self._ready and len(self._ready[tier]) < self.size:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return tier in self._ready

    def wait_idle(self, tier: str, timeout_s: float = 60.0) -> bool:
        """A full pool and no removal in flight (benchmarks measure the call alone)."""
        ok = self.wait_ready(tier, timeout_s)
        with self._cond:
            reapers = list(self._reapers)
        for r in reapers:
            r.join(timeout_s)
        return ok

    def last_served_from_pool(self, tier: str) -> bool:
        return self._last.get(tier, False)

    # -- serving ------------------------------------------------------------------------
    def try_run(
        self, tier: str, request: SandboxRequest, limits: Limits, *, cancel: RunCancel | None = None
    ) -> SandboxResult | None:
        """Serve from the pool, or None (caller runs cold) if it cannot."""
        if tier not in self._ready or limits != self.limits:
            self._last[tier] = False
            return None
        with self._cond:
            if self._closed or not self._ready[tier]:
                self._last[tier] = False
                return None
            warm = self._ready[tier].popleft()
            self._calls.add(warm.cid)
            self._cond.notify_all()  # wake the refill thread
        self._last[tier] = True
        error: SandboxError | None = None
        try:
            with docker_errors(f"the {tier} sandbox call"):
                result = self._serve(self.tiers[tier], warm, request, limits, cancel)
        except SandboxError as e:
            error = e
        finally:
            self._end_call(warm.cid)
        if self._was_cut(warm.cid):  # what it got before its container went is no result
            raise self._interrupted(tier) from error
        if error is not None:
            raise error
        return result

    def _end_call(self, cid: str) -> None:
        self._reap(cid)
        with self._cond:
            self._calls.discard(cid)
            self._cond.notify_all()

    def _was_cut(self, cid: str) -> bool:
        with self._cond:
            return cid in self._cut

    @staticmethod
    def _interrupted(tier: str) -> SandboxInterrupted:
        return SandboxInterrupted(
            f"the {tier} sandbox call was cut short: the gateway's warm pool closed (shutting down) "
            "while it ran; no result"
        )

    @staticmethod
    def _serve(
        t: DockerTier, warm: _Warm, request: SandboxRequest, limits: Limits, cancel: RunCancel | None
    ) -> SandboxResult:
        job = json.dumps(
            {
                "argv": request.argv(),
                "code": request.code,
                "files": {k: base64.b64encode(v).decode() for k, v in request.files.items()},
                "stdin": base64.b64encode(request.stdin).decode() if request.stdin is not None else None,
                "env": {**SANDBOX_ENV, **request.env},
            }
        ).encode()
        return t.execute(
            docker_client(),
            warm.cid,
            warm.raw,
            job,
            limits,
            time.monotonic(),
            started=True,
            trailer=True,
            cancel=cancel,
        )

    def _reap(self, cid: str) -> None:
        """Remove a served container off the caller's path; registered before it starts, so a
        ``close`` that comes next waits for it (the orphan sweep covers a crash meanwhile)."""
        reaper = threading.Thread(target=self._remove, args=(cid,), name="sandbox-reap", daemon=True)
        with self._cond:
            self._reapers = [r for r in self._reapers if r.is_alive()] + [reaper]
            reaper.start()

    def close(self, grace_s: float | None = None) -> None:
        """Stop taking calls and refilling, wait for the refills and for the calls in flight
        (``grace_s``, default their time limit + 60 s), then remove every container left (a call
        still running is cut short: SandboxInterrupted) and wait for the removals."""
        with self._cond:
            self._closed = True
            for q in self._ready.values():
                q.clear()
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=SPAWN_BOUND_S)
            if t.is_alive():  # its own timeouts bound it: it removes what it made when it ends
                log.warning("warm pool: %s still starting a sandbox after %.0f s", t.name, SPAWN_BOUND_S)
        with self._cond:
            grace = self.limits.timeout_s + 60 if grace_s is None else grace_s
            if not self._cond.wait_for(lambda: not self._calls, grace):
                log.warning(
                    "warm pool: closing with %d call(s) still running: they are cut short", len(self._calls)
                )
            self._cut |= self._calls  # marked before their containers go: they fail, not return
            left, reapers = list(self._live), list(self._reapers)
        for cid in left:
            self._remove(cid)
        for r in reapers:
            r.join(timeout=REMOVE_DEADLINE_S)
