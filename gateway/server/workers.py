"""``symbi serve --workers N``: N gateway processes behind one HAProxy, on one machine.

The one-command form of the replicas of a team deployment (README, "Running a team
deployment"): each worker is a plain ``symbi serve`` on a 127.0.0.1 port of its own, with a
data dir of its own (``<data_dir>/worker-<i>``: its audit chain, audit key, agent socket),
and the state that must be shared lives where replicas share it -- ``[state]`` Redis (rate
limits, recent-call counts, the bus) and PostgreSQL (tool records, API keys, pins, the policy,
every worker's audit chain for ``symbi audit verify --shared``). A handshake-era session lives
in the worker that made it: HAProxy's stick table on ``Mcp-Session-Id`` keeps it there (the
same frontend as ``deploy/haproxy.cfg``). A dashboard login holds on every worker: they sign
its cookie with a key derived from the shared secret and keep its logout on Redis
(``gateway.server.dashboard.sessions``).

Without shared state N workers would each keep their own rate limits, keys and pins, so the
supervisor refuses to start (``ConfigError`` naming the key) rather than split them silently.
It stops every child on SIGTERM/SIGINT, and all of them when any one exits
(``WorkerExited`` naming it): no half-served port, no orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx
from sse_starlette.sse import EventSourceResponse

from gateway.config.model import Config
from gateway.custody import secure_data_dir
from gateway.errors import ConfigError, WorkerExited
from gateway.server.connections import open_files_ceiling
from gateway.workerdirs import worker_data_dir

__all__ = ["Supervisor", "WorkerPlan", "check_shared_state", "run_workers", "worker_data_dir"]

_logger = logging.getLogger("symbi.workers")

READY_TIMEOUT_S = 120.0  # a worker verifies its upstreams before /readyz answers 200
STOP_TIMEOUT_S = 20.0  # a worker's graceful stop (upstreams, sandboxes, audit batch) before SIGKILL
_PR_SET_PDEATHSIG = 1


def check_shared_state(cfg: Config) -> None:
    """Refuse N > 1 workers on a config whose state would split between them.

    Raises:
        ConfigError: naming the missing (or per-process) key; exit 2 from the CLI.
    """
    why = "so that N workers share one rate limit, one set of keys, pins and approvals"
    if not cfg.state.redis_url:
        raise ConfigError(f"--workers needs [state] redis_url (SYMBI_STATE_REDIS_URL) {why}")
    if not cfg.state.postgres_url:
        raise ConfigError(f"--workers needs [state] postgres_url (SYMBI_STATE_POSTGRES_URL) {why}")
    if not cfg.bus.secret:
        # the bus on Redis authenticates its key directory with it, and a tools/list cursor one
        # worker made is checked by another under it (else each would make its own)
        raise ConfigError(
            "--workers needs [bus] secret (SYMBI_BUS_SECRET, base64 of 32 bytes: "
            "head -c 32 /dev/urandom | base64): the workers' bus and tools/list cursors share it"
        )
    if cfg.mcp.discovery_enabled:
        # the quarantine is a file in each worker's data dir: `symbi tools approve SERVER` writes
        # <data_dir>'s (no worker reads it), the admin API the one worker the front picked
        raise ConfigError(
            "mcp.discovery_enabled is on (or MCP_SERVER_DISCOVERY): with --workers each worker would keep "
            "its own discovered servers and approvals; turn discovery off, or run one process"
        )
    for key, value in (
        ("audit.path", cfg.audit.path),
        ("audit.key_path", cfg.audit.key_path),
        ("audit.archive_dir", cfg.audit.archive_dir),
        # its lines name a chain by the log's file name, audit.db in every worker: one worker's
        # checkpoints would look like the other's, and its next start would be refused
        ("audit.checkpoint_export", cfg.audit.checkpoint_export),
    ):
        if value is not None:  # one file for N chain writers would fork the chain
            raise ConfigError(
                f"{key} is set: with --workers each worker keeps its audit chain and key in its own "
                f"data dir ({worker_data_dir(cfg.data_dir, 0)}, ...); leave {key} unset"
            )


# every SSE stream's keepalive comment: the SDK's (sse-starlette) and the fast lane's (httpsse)
PING_S = EventSourceResponse.DEFAULT_PING_INTERVAL
# HAProxy holds a request's whole head in one buffer (tune.bufsize, 16 KiB by default) and keeps
# tune.maxrewrite (1 KiB) of it free: past that it answers 400 itself
HAPROXY_BUFSIZE = 16384
HAPROXY_REWRITE_RESERVE = 1024
# Around a call's own bound: verification, the policy, a slot in the scheduler's queue and the
# answer's write. More than SSE's keepalive interval (PING_S), so a streamed answer's pings
# always come within the front's inactivity timeout.
FRONT_MARGIN_S = 30.0


@dataclass(frozen=True)
class FrontLimits:
    """HAProxy's limits, derived from the workers' config in one place (``front_limits``)."""

    header_timeout_s: float  # ``timeout http-request``: http.header_timeout_s
    bufsize: int  # ``tune.bufsize``: a request's head up to http.max_header_bytes fits
    silence_s: float  # ``timeout client``/``server``: the longest a worker's answer may be silent
    stick_s: float  # the stick entry's life: as long as a worker may keep the session
    # a worker's open connections: its MCP requests (mcp.max_concurrent_connections) and one GET
    # stream per session (http.max_sessions); ``maxconn`` is this times the workers
    worker_connections: int


def longest_call_s(cfg: Config) -> float:
    """The longest a ``tools/call`` may run in a worker before the gateway itself ends it."""
    bounds = [cfg.mcp.call_timeout_s, cfg.runtime.resources.execution_timeout_s]
    bounds += [s.timeout_s for s in cfg.servers.values() if s.timeout_s is not None]
    return max(bounds)


def front_limits(cfg: Config) -> FrontLimits:
    """The front never cuts what a worker allows. An SSE answer pings every ``PING_S`` s; a
    JSON answer (``http.json_response``) is silent until the call ends, so the inactivity
    timeouts cover the longest call. The worker starts a session's idle count
    (``http.session_idle_timeout_s``) when its last request ends; HAProxy refreshes the
    session's stick entry when a request of it starts, holds it while one is under way (an open
    GET stream may last for hours) and refreshes it when that one ends (``haproxy_config``).
    A request's head the workers accept (``http.max_header_bytes``) fits HAProxy's buffer.
    The expiry is the idle timeout + the silence: it would cover a front that refreshed the
    entry only when a request starts, as long as no request outlasted the silence.
    The front admits (``maxconn``) the connections the workers serve together, no more: past
    them HAProxy leaves new ones waiting to be accepted rather than hand a worker what it
    refuses, and a worker configured for more is not held below its limits."""
    silence = max(longest_call_s(cfg) + FRONT_MARGIN_S, 2.0 * PING_S)
    bufsize = max(HAPROXY_BUFSIZE, cfg.http.max_header_bytes + HAPROXY_REWRITE_RESERVE)
    return FrontLimits(
        cfg.http.header_timeout_s,
        bufsize,
        silence,
        cfg.http.session_idle_timeout_s + silence,
        cfg.mcp.max_concurrent_connections + cfg.http.max_sessions,
    )


# descriptors HAProxy holds besides two a connection: its listener, checks, logs, the master's
FRONT_FD_RESERVE = 256


def check_front_fits(cfg: Config, n: int) -> None:
    """Refuse a front that could not hold the connections its ``maxconn`` admits: HAProxy keeps
    two descriptors each (client and worker side), and past the open-file limit it refuses to
    start, after every worker has.

    Raises:
        ConfigError: naming the keys the front's ``maxconn`` comes from (exit 2).
    """
    admitted = n * front_limits(cfg).worker_connections
    need = 2 * admitted + FRONT_FD_RESERVE
    hard = open_files_ceiling()
    if need > hard:
        raise ConfigError(
            f"--workers {n}: the front would admit {admitted} connections (per worker "
            "mcp.max_concurrent_connections + http.max_sessions), which needs "
            f"{need} open files; the limit here is {hard}: lower those keys or --workers, "
            "or raise the open-file limit (ulimit -n)"
        )


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def haproxy_config(
    host: str, port: int, backends: Sequence[int], *, limits: FrontLimits, drop_to: tuple[int, int] | None
) -> str:
    """HAProxy's config: round robin over the workers, a session stuck to the worker that made
    it (learned from the response's ``Mcp-Session-Id``), as ``deploy/haproxy.cfg``.

    The health check is ``/healthz`` (the worker's gateway itself): a worker whose shared state
    is down still answers, so the client hears its ``state_unavailable``, not HAProxy's 503.
    HAProxy reads a request's headers before a worker sees any of them, so the front cuts off
    slow headers itself (``http.header_timeout_s``: ``timeout http-request``, which also bounds
    the wait for the next request on a kept-alive connection); a slow body still reaches the
    worker as it comes, and the worker's ``body_timeout_s`` cuts it off. The other limits are
    ``front_limits``'.

    A request of a session the table knows tracks its entry (``track-sc0``): HAProxy keeps a
    tracked entry past its expiry and, as the table stores ``conn_cur``, refreshes it when the
    request ends. Without that, a client holding only the session's GET stream for longer than
    the expiry lost its entry while the worker kept the session, and its next POST went round
    robin (404 on the other worker). Only ids already in the table are tracked (``in_table``):
    made-up ids would each take an entry, and a full table drops the oldest, real sessions'."""
    bind = f"ipv6@{host}:{port}" if ":" in host else f"{host}:{port}"
    user = f"    uid {drop_to[0]}\n    gid {drop_to[1]}\n" if drop_to else ""  # once bound
    servers = "\n".join(f"    server worker-{i} 127.0.0.1:{p} check inter 1s" for i, p in enumerate(backends))
    return f"""global
    maxconn {len(backends) * limits.worker_connections}
    tune.bufsize {limits.bufsize}
{user}defaults
    mode http
    timeout connect 5s
    timeout http-request {_ms(limits.header_timeout_s)}
    timeout client {_ms(limits.silence_s)}
    timeout server {_ms(limits.silence_s)}
frontend mcp
    bind {bind}
    default_backend workers
backend workers
    balance roundrobin
    option redispatch
    retries 2
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host 127.0.0.1
    stick-table type string len 64 size 1m expire {_ms(limits.stick_s)} store conn_cur
    http-request track-sc0 req.hdr(mcp-session-id) if {{ req.hdr(mcp-session-id),in_table(workers) }}
    stick match req.hdr(mcp-session-id)
    stick store-response res.hdr(mcp-session-id)
{servers}
"""


def _nobody() -> tuple[int, int]:
    """uid and gid of ``nobody`` (what HAProxy runs as once bound, started by root)."""
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return (65534, 65534)
    return (pw.pw_uid, pw.pw_gid)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str  # "worker 0", "haproxy"
    proc: subprocess.Popen[bytes]
    port: int


@dataclass
class WorkerPlan:
    """What the supervisor starts: ``n`` workers of ``config`` and the front on host:port."""

    cfg: Config
    n: int
    config_path: Path | None
    environ: Mapping[str, str]
    host: str
    port: int
    haproxy: str = field(default_factory=lambda: shutil.which("haproxy") or "")


class Supervisor:
    """Starts the workers and HAProxy, watches them, stops them all (``run``)."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.children: list[Child] = []
        self._stopping = False

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (returns) or a child exits (``WorkerExited``)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._start()
            self._watch()
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _start(self) -> None:
        plan = self.plan
        secure_data_dir(plan.cfg)  # the workers' folders sit in it: 0700 like a data dir
        for i in range(plan.n):
            self.children.append(self._spawn_worker(i))
        self._wait_ready()
        if self._stopping:
            return
        front = self._spawn_haproxy()
        self.children.append(front)
        self._wait_port(front)
        _logger.info(
            "serving http://%s:%d%s: HAProxy (pid %d) in front of %d workers (pids %s)",
            plan.host,
            front.port,
            plan.cfg.http.path,
            front.proc.pid,
            plan.n,
            ", ".join(str(c.proc.pid) for c in self.children[:-1]),
        )

    def _spawn(self, name: str, argv: list[str], port: int, env: Mapping[str, str]) -> Child:
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor, which stops them in order
            preexec_fn=_die_with_parent,  # prctl runs in the child (no threads here to deadlock)
        )
        return Child(name, proc, port)

    def _spawn_worker(self, i: int) -> Child:
        plan = self.plan
        port = _free_port()
        argv = [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", str(port)]
        if plan.config_path is not None:
            argv += ["--config", str(plan.config_path)]
        env = {**plan.environ, "SYMBI_DATA_DIR": str(worker_data_dir(plan.cfg.data_dir, i))}
        return self._spawn(f"worker {i}", argv, port, env)

    def _spawn_haproxy(self) -> Child:
        plan = self.plan
        port = plan.port or _free_port(plan.host)
        drop_to = _nobody() if os.geteuid() == 0 else None  # it needs no file once bound
        backends = [c.port for c in self.children]
        cfg = haproxy_config(plan.host, port, backends, limits=front_limits(plan.cfg), drop_to=drop_to)
        path = Path(plan.cfg.data_dir) / "haproxy.cfg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(cfg)
        env = {"PATH": plan.environ.get("PATH", os.defpath)}
        # -W, master-worker: the process that serves (HAProxy's worker) drops to nobody, which
        # clears its PR_SET_PDEATHSIG; the master keeps root and the signal, and its worker
        # exits with it, so a killed supervisor still leaves no HAProxy behind
        return self._spawn("haproxy", [plan.haproxy, "-W", "-db", "-f", str(path)], port, env)

    def _check_children(self) -> None:
        for c in self.children:
            rc = c.proc.poll()
            if rc is not None and not self._stopping:
                raise WorkerExited(
                    f"{c.name} (pid {c.proc.pid}) exited with status {rc}: stopped every other"
                )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = list(self.children)
        with httpx.Client(timeout=2) as client:
            while waiting and not self._stopping:
                self._check_children()
                waiting = [c for c in waiting if not _ready(client, c.port)]
                if waiting and time.monotonic() > deadline:
                    names = ", ".join(c.name for c in waiting)
                    raise WorkerExited(f"{names} not ready after {READY_TIMEOUT_S:.0f} s (its /readyz)")
                if waiting:
                    time.sleep(0.1)

    def _wait_port(self, child: Child) -> None:
        deadline = time.monotonic() + 15
        while not self._stopping:
            self._check_children()
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.plan.host, child.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                raise WorkerExited(f"{child.name} did not open {self.plan.host}:{child.port}")
            time.sleep(0.05)

    def _watch(self) -> None:
        while not self._stopping:
            self._check_children()
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the front first (no new requests), then the workers; SIGKILL what lingers."""
        self._stopping = True
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.terminate()
            if c.name == "haproxy":
                _reap(c.proc, STOP_TIMEOUT_S)
        for c in self.children:
            _reap(c.proc, STOP_TIMEOUT_S)


def _ready(client: httpx.Client, port: int) -> bool:
    try:
        return client.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_workers(
    cfg: Config,
    n: int,
    *,
    config_path: Path | None,
    environ: Mapping[str, str],
    host: str | None,
    port: int | None,
) -> None:
    """``symbi serve --workers n`` (n > 1): refuse a config whose state would split, then
    supervise until SIGTERM/SIGINT.

    Raises:
        ConfigError: no shared state, a front that could not hold what the workers serve,
            or HAProxy not installed (exit 2).
        WorkerExited: a child exited or never got ready (exit 1); every other child is stopped.
    """
    check_shared_state(cfg)
    check_front_fits(cfg, n)
    plan = WorkerPlan(
        cfg, n, config_path, environ, host or cfg.http.host, cfg.http.port if port is None else port
    )
    if not plan.haproxy:
        raise ConfigError("--workers needs HAProxy in front of the workers: install it (make state-engines)")
    Supervisor(plan).run()
