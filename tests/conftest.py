"""Shared fixtures: paths to the real peers, config files, gateway processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pytest

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.events import Event, EventSink

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
NODE_MODULES = ROOT / "node_modules"
EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"
FILESYSTEM_JS = NODE_MODULES / "@modelcontextprotocol/server-filesystem/dist/index.js"
TIME_BIN = VENV_BIN / "mcp-server-time"
SYMBI = VENV_BIN / "symbi"


class RecordingSink:
    """A real EventSink that keeps what it was given (the audit log is the production sink),
    passing each event on to ``inner`` when there is one (the log, as a gateway does)."""

    def __init__(self, inner: EventSink | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.inner = inner

    def emit(
        self,
        event_type: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        self.events.append((event_type, dict(details)))
        if self.inner is not None:
            self.inner.emit(event_type, details, principal=principal, agent=agent)

    def types(self) -> list[str]:
        return [t for t, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The details of each event of type ``kind``, in order."""
        return [d for t, d in self.events if t == kind]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Where a root session's temp folders go: not beneath /tmp, since what an unsandboxed upstream
# writes there is its own (gateway/upstream/confine.py), and tests read what their upstreams
# write in the test's folder (record files).
TEST_ROOT = Path("/var/lib/symbi-tests")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """A temp root of this session's own: pytest's shared /tmp/pytest-of-root is reset to 0700
    by every other session, and the upstream user (below) must be able to enter ours."""
    if config.option.basetemp is None and os.geteuid() == 0:
        TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="", dir=TEST_ROOT))  # short: HAProxy's sockets take 97
        config.option.basetemp = str(base / "t")
        config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))


# Under pytest-xdist (`make test`: --dist loadfile --no-loadscope-reorder) test files are handed
# to the workers in collection order. The longest files go first, so the run does not end with
# one worker on a long file while the other idles: these (longest first, from the summed
# --durations of a whole run, session 18, load 4-6), then every file with a `slow` or `sandbox`
# test, then the rest as collected. A file's own tests keep their order. A file missing here
# only starts later; nothing else.
LONG_FILES_FIRST = (
    "tests/deploy/test_image.py",  # the image build (niced: it fills what the other worker leaves)
    "tests/server/http/test_footprint.py",  # the 10,000-session churn (issue #19)
    "tests/runtime/test_hosted.py",
    "tests/verify/test_gateway_verification.py",
    "tests/server/test_stdio_fastlane.py",
    "tests/server/test_stdio_e2e.py",
    "tests/screen/test_gateway_screening.py",
    "tests/policy/test_gateway_policy.py",
    "tests/server/test_stdio_cancel_progress.py",
    "tests/sandbox/test_gateway_sandboxed_upstream.py",
    "tests/server/test_workers.py",
    "tests/upstream/test_hostile.py",
    "tests/memory/test_cli.py",
    "tests/state/test_limiter.py",
    "tests/server/test_concurrency.py",
    "tests/conformance/test_independent.py",
    "tests/conformance/test_conformance.py",
    "tests/server/http/test_tools_paging.py",
    "tests/server/test_http_e2e.py",
    "tests/server/http/test_cancel_progress.py",
    "tests/runtime/test_breaker.py",
    "tests/server/test_inspector.py",
    "tests/bus/test_http_bus.py",
    "tests/sandbox/test_tiers.py",
    "tests/server/http/test_keys_cmd.py",
    "tests/server/test_front_audit.py",
    "tests/policy/test_policy_cmd.py",
    "tests/onboard/test_import_e2e.py",
    "tests/cli/test_audit_retention_cmd.py",
    "tests/schemapin/test_cli.py",
    "tests/runtime/test_status_cli.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the order does not change the wall time
    rank = {f: i for i, f in enumerate(LONG_FILES_FIRST)}
    file_key: dict[str, tuple[int, int]] = {}
    for item in items:
        f = item.nodeid.split("::", 1)[0]
        heavy = item.get_closest_marker("slow") is not None or item.get_closest_marker("sandbox") is not None
        key = (0, rank[f]) if f in rank else (1, 0) if heavy else (2, 0)
        file_key[f] = min(file_key.get(f, key), key)
    # the same order in every worker (xdist checks that their collections agree); stable
    items.sort(key=lambda item: file_key[item.nodeid.split("::", 1)[0]])


def _enterable_down_to(folder: Path) -> None:
    """Every folder of this session's own temp root down to ``folder`` (under pytest-xdist a
    worker's base temp is one level deeper: <root>/t/popen-gw0)."""
    for d in (*reversed(folder.parents), folder):
        if TEST_ROOT not in d.parents:
            continue  # only this session's own folders
        os.chmod(d, os.stat(d).st_mode | 0o111)


@pytest.fixture(scope="session", autouse=True)
def _upstream_user_can_enter_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before any module or package fixture makes its folder (e.g. a shared gateway's config
    folder) under the base temp, which runs first in a pytest-xdist worker."""
    if os.geteuid() == 0:
        _enterable_down_to(tmp_path_factory.getbasetemp())


@pytest.fixture(autouse=True)
def _upstream_user_can_enter_tmp_path(request: pytest.FixtureRequest) -> None:
    """Unsandboxed upstreams run as the unprivileged `symbi-upstream` user, in the config's
    folder: let it enter (not list) the test's folder, as it could a real config folder.
    The data dir inside stays 0700 (the gateway makes it so)."""
    if "tmp_path" not in request.fixturenames or os.geteuid() != 0:
        return
    _enterable_down_to(request.getfixturevalue("tmp_path"))


# Ports below the kernel's ephemeral range (32768-60999 by default): the kernel never hands one
# of these to an outgoing connection or a bind to port 0, which with bind-to-0 here could take the
# port between this check and the server's bind (seen with two pytest-xdist workers).
_ALL_PORTS = range(20000, 32768)


def worker_ports(worker: str, count: int) -> range:
    """This pytest-xdist worker's own slice of the range (``worker`` is its id, "gw0"...; "" when
    not under xdist): two workers never pick the same port, so neither can take the other's
    between its check and its server's bind."""
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(count, index + 1)
    size = len(_ALL_PORTS) // count
    start = _ALL_PORTS.start + index * size
    return range(start, start + size)


_PORTS = worker_ports(
    os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
)
_handed_out: dict[int, int] = {}  # port -> its lock's descriptor, held to this process's end
# Lock files shared by every pytest run on the machine (several suites at once): a port one run
# handed out is skipped by the others while that run lives (flock goes with the process).
_PORT_LOCKS = Path(tempfile.gettempdir()) / "symbi-test-ports"


def _reserve(port: int) -> bool:
    """Whether this process now holds ``port``'s lock (no other pytest run on the machine does)."""
    _PORT_LOCKS.mkdir(mode=0o1777, exist_ok=True)
    fd = os.open(_PORT_LOCKS / str(port), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _handed_out[port] = fd
    return True


def free_port() -> int:
    """A 127.0.0.1 port that is free now, for a server the test starts next: never handed out
    twice by this process, nor by another pytest run while this one holds it."""
    for _ in range(200):
        port = _PORTS[secrets.randbelow(len(_PORTS))]
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _reserve(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # (a crowded range: any free port)
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_sockets(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on ``port`` (any address, IPv4 or IPv6)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.add(fields[9])
    return found


def _process_tree(pid: int) -> set[int]:
    """``pid`` and its descendants (a server's workers may hold its socket)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree = {pid}
    while grown := {p for p, parent in parents.items() if parent in tree} - tree:
        tree |= grown
    return tree


def port_owner(pid: int, port: int) -> bool | None:
    """Whether the server on ``port`` is process ``pid`` (or one of its children): True when it
    holds a socket listening there, False when only others do, None when nobody listens yet.
    A server that answers on a port is not proof it is the one the test started: another
    test's may have bound the port first (this one then fails to bind and exits)."""
    sockets = {f"socket:[{inode}]" for inode in _listening_sockets(port)}
    if not sockets:
        return None
    for p in _process_tree(pid):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in sockets:
                        return True
    return False


def wait_port_owned(pid: int, port: int, what: str, timeout: float = 15.0) -> None:
    """Wait until process ``pid`` listens on ``port``; fail clearly if another process does."""
    deadline = time.monotonic() + timeout  # the bound of the wait, not a timing assertion
    while time.monotonic() < deadline:
        if port_owner(pid, port):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"{what} (pid {pid}) did not listen on port {port}: other listeners {_listening_sockets(port)}"
    )


def require_peers() -> None:
    missing = [p for p in (EVERYTHING_JS, FILESYSTEM_JS, TIME_BIN) if not p.exists()]
    if missing:
        pytest.fail(f"peer servers missing (run `make setup`): {', '.join(map(str, missing))}")


POLICY = ROOT / "policies.rego"
TEST_POLICY_DATA = ROOT / "tests/assets/policy/test-data.json"


def initialize_request(protocol: str = "2025-06-18", rid: int = 1) -> dict[str, Any]:
    """A client's raw JSON-RPC ``initialize`` (for tests that speak the wire themselves)."""
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "initialize",
        "params": {
            "protocolVersion": protocol,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }


def write_config(tmp_path: Path, body: str, name: str = "symbi.toml") -> Path:
    """Write a config whose data dir is inside tmp_path.

    Unless the body has its own [policy], the real policies.rego runs with the test data
    (tests/assets/policy/test-data.json: principal "local"/"tester" may call every tool of
    the test upstreams, unverified ones included, paths under /tmp, "api_token" redacted),
    or, with policies off, no [policy] (its keys would be refused: nothing reads them).
    """
    path = tmp_path / name
    text = textwrap.dedent(body)
    policies_off = re.search(
        r"^\s*(unsafe_disable_policies\s*=\s*true|enforce_policies\s*=\s*false)", text, re.M
    )
    if "[policy]" not in text and not policies_off:
        text = f'[policy]\npath = "{POLICY}"\ndata = "{TEST_POLICY_DATA}"\n' + text
    if "[gateway]" not in text:
        text = f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n' + text
    path.write_text(text)
    return path


def everything_stdio_config(
    tmp_path: Path,
    verification: str = "warn",
    *,
    principal: str | None = None,
    policy_data: Path | None = None,
    extra: str = "",
    name: str = "symbi.toml",
) -> Path:
    """server-everything over stdio, no code tools (``write_config``'s defaults otherwise); with
    ``principal`` the stdio principal's id, with ``policy_data`` the repo policy on that data
    file, and ``extra`` (more TOML tables: another upstream) after it."""
    head = f'[gateway.stdio_principal]\nid = "{principal}"\n' if principal is not None else ""
    if policy_data is not None:
        head += f'[policy]\npath = "{POLICY}"\ndata = "{policy_data}"\n'
    return write_config(
        tmp_path,
        head
        + f"""
        [sandbox]
        code_tools = false
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "{verification}"
        """
        + extra,
        name=name,
    )


def policy_config(tmp_path: Path, rego: str, servers: str, name: str = "symbi.toml") -> Path:
    """A config deciding by the Rego ``rego`` (written beside it), code tools off, and the
    upstreams of ``servers`` (a TOML fragment, dedented)."""
    policy = tmp_path / f"{Path(name).stem}.rego"
    policy.write_text(rego)
    head = f'[policy]\npath = "{policy}"\n[sandbox]\ncode_tools = false\n'
    return write_config(tmp_path, head + textwrap.dedent(servers), name=name)


# the [mcp] keys that bring a killed upstream back within a second
FAST_RESTARTS = "restart_backoff_initial_s = 0.2\nrestart_backoff_max_s = 1.0\n"


def mutable_config(tmp_path: Path, before: str = "", copy_as: str | None = None) -> Path:
    """A config whose one upstream is ``mut`` (tests/peers/mutable_server.py, verification
    ``warn``), code tools off; ``before``: more of the config ahead of it (dedented);
    ``copy_as``: run a copy of the server under this name in ``tmp_path`` (a path only this
    test's process has, to find or kill it)."""
    mutable = ROOT / "tests" / "peers" / "mutable_server.py"
    if copy_as is not None:
        mutable = Path(shutil.copy(mutable, tmp_path / copy_as))
    return write_config(
        tmp_path,
        textwrap.dedent(before)
        + f'[sandbox]\ncode_tools = false\n[servers.mut]\ncommand = "{sys.executable}"\n'
        + f'args = ["{mutable}"]\nverification = "warn"\n',
    )


def peers_config(tmp_path: Path, extra: str = "", verification: str = "warn") -> Path:
    require_peers()
    data = tmp_path / "files"
    data.mkdir(exist_ok=True)
    (data / "hello.txt").write_text("hello from the test folder\n")
    return write_config(
        tmp_path,
        f"""
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "{verification}"

        [servers.fs]
        command = "node"
        args = ["{FILESYSTEM_JS}", "{data}"]
        verification = "{verification}"

        [servers.time]
        command = "{TIME_BIN}"
        args = ["--local-timezone", "UTC"]
        verification = "{verification}"
        """
        + textwrap.dedent(extra),
    )


def upstream_writable(tmp_path: Path) -> Path:
    """A folder the unprivileged upstream user may write (a test server's record file)."""
    d = tmp_path / "upstream-rw"
    d.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("symbi-upstream")
            os.chown(d, pw.pw_uid, pw.pw_gid)
        except KeyError:  # created by the gateway on first use; `make setup` creates it first
            os.chmod(d, 0o777)
    return d


def parent_of(pid: int) -> int:
    """The parent process of ``pid`` (/proc/PID/stat; the command name may hold spaces)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` now."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if parent_of(int(d.name)) == pid:
                    kids.append(int(d.name))
    return kids


def run_symbi(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``symbi ARGS`` as a real subprocess of this checkout (stdin closed), its output as text."""
    return subprocess.run(
        [str(SYMBI), *map(str, args)],
        capture_output=True,
        text=True,
        env=symbi_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def symbi_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    env.update(extra)
    return env


def wait_listening(proc: subprocess.Popen[Any], port: int, what: str) -> None:
    """Until a server process (or a child of it) listens on ``port`` (bounded: 30 s, not a
    timing assertion); fails at once if the process ends first (another process had the port)."""
    deadline = time.monotonic() + 30
    while True:
        if port_owner(proc.pid, port):  # its own socket: another run's server may answer there
            return
        assert proc.poll() is None and time.monotonic() < deadline, f"{what} did not start (on port {port})"
        time.sleep(0.1)


@contextlib.contextmanager
def surrogate_http(wait_s: str, **env: str) -> Iterator[str]:
    """The surrogate peer (tests/peers/surrogate_server.py) over streamable HTTP on a free
    loopback port, waiting ``wait_s`` seconds for the answer to its own requests (more
    ``SURROGATE_*`` settings in ``env``); yields its URL, kills it after."""
    port = free_port()
    env = {**os.environ, "SURROGATE_WAIT_S": wait_s, **env}
    peer = ROOT / "tests/peers/surrogate_server.py"
    proc = subprocess.Popen([sys.executable, str(peer), "--http", str(port)], env=env)
    try:
        wait_listening(proc, port, "the HTTP peer")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait(10)


def symbi_audit(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``symbi audit ARGS --config cfg`` in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", *args, "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=symbi_env(),
    )


def audit_verifies(cfg: Path) -> None:
    out = symbi_audit(cfg, "verify")
    assert out.returncode == 0, out.stdout + out.stderr


def break_audit_log(db: Path) -> None:
    """Break the audit log at ``db`` as a full disk would: a trigger refuses every insert (a
    running gateway may hold the write lock meanwhile: waited for)."""
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("CREATE TRIGGER no_insert BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'full'); END")
    conn.commit()
    conn.close()


class Stall:
    """The log's writer thread held in a maintenance task (a hung fsync would hold it so):
    commits hang, the log is not broken. ``end`` lets it go."""

    def __init__(self, log: AuditLog) -> None:
        self._started, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=log.maintain, args=(self._hold,), daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def _hold(self, _ctx: object) -> None:
        self._started.set()
        # past every test's guard (a stall that ended by itself let a test that waited on the
        # log pass); every user calls ``end``, in a ``finally``
        self._release.wait(600)

    def end(self) -> None:
        self._release.set()
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()
