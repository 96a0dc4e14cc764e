"""``http.max_connections`` (gateway/server/connections.py): a client opening connections and
sending nothing held as many as it liked, each until the header deadline; at the open-file
limit the gateway accepted nothing (a legitimate request was reset) and opened nothing (the
policy's reload thread died on EMFILE). Attacked with a real ``symbi serve`` and raw asyncio
sockets on 127.0.0.1: the gateway's descriptors stay bounded, a legitimate request is
served throughout, a request whose credential passed is never cut, and with every slot
holding one a new connection is answered 503. Session 41: a request without a credential
(a slow-body POST to the dashboard's login) held its slot as busy until ``http.body_timeout_s``,
and ``max_connections`` of them left every other caller 503; now it gives way, oldest first."""

from __future__ import annotations

import asyncio
import http.client
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from gateway.config.load import load_config
from gateway.errors import ConfigError
from gateway.server.auth import ApiKeyStore
from tests.conftest import ROOT, write_config
from tests.server._http import serve_process

CAP = 20
FLOOD = 300
BUSY = 8
# a dashboard login whose form is still coming: a request in progress (until body_timeout_s)
SLOW_POST = (
    b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/x-www-form-urlencoded\r\n"
    b"content-length: 20\r\n\r\nkey=abc"
)
REST = b"defghijklmnop"  # the 13 bytes left of the 20
INIT = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}'
)
BOUND = "[http]\nmax_connections = {}\nheader_timeout_s = 120.0\nbody_timeout_s = 120.0\n"
# a hosted agent, never started: the gateway opens the agents' socket
AGENT = '[sandbox]\ncode_tools = false\n[agents.idle]\ncommand = "/bin/true"\nsandbox = "bwrap"\nstart = "on-demand"\n'
CONTINUE = b"HTTP/1.1 100 Continue"  # uvicorn's answer to Expect once the app reads the body


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _until(what: str, check: object, seconds: float = 60.0) -> None:
    """Until ``check()`` holds; the deadline bounds the wait, it is no timing assertion."""
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _open(where: int | str) -> socket.socket:
    """A new connection to the gateway's TCP ``port`` or the agents' Unix socket at a path."""
    if isinstance(where, int):
        return socket.create_connection(("127.0.0.1", where), timeout=30)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(where)
    return s


def _healthz(where: int | str) -> bytes:
    """What a GET /healthz on a new connection is answered (b"" when reset)."""
    with _open(where) as s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(100)
        except ConnectionError:
            return b""


def _refused(where: int | str) -> bool:
    """Whether a new connection is answered 503 before it asks (it sends nothing: on the Unix
    socket a write after the gateway's close fails, and the answer would be lost)."""
    with _open(where) as s:
        return s.recv(200).startswith(b"HTTP/1.1 503")


def _busy(port: int, stack: ExitStack) -> socket.socket:
    """A connection whose request is in progress (its body not all sent)."""
    s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
    s.sendall(SLOW_POST)
    return s


def _mcp_post(key: str, *, close: bool = False) -> bytes:
    """The head of an MCP initialize POST with API key ``key`` (its body is ``INIT``)."""
    return (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
        f"content-length: {len(INIT)}\r\n{'connection: close' if close else 'expect: 100-continue'}\r\n\r\n"
    ).encode()


def _reading(where: int | str, stack: ExitStack, head: bytes) -> socket.socket:
    """A connection whose request's body the gateway is reading (it said 100 Continue): a
    request in progress, its credential checked first if it sent one."""
    s = stack.enter_context(_open(where))
    s.sendall(head)
    assert s.recv(100).startswith(CONTINUE)
    return s


def _initialize(port: int, key: str) -> bytes:
    """What a new connection's authenticated MCP initialize is answered (b"" when reset)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(_mcp_post(key, close=True) + INIT)
            return s.recv(100)
        except ConnectionError:
            return b""


def _answered(s: socket.socket) -> int:
    """The status of the response ``s`` is answered, read to its end."""
    response = http.client.HTTPResponse(s)
    response.begin()
    response.read()
    return response.status


def _answered_after(s: socket.socket) -> int:
    """The status ``s``'s request (an ``_mcp_post``) is answered once its body is sent."""
    s.sendall(INIT)
    return _answered(s)


def _cut(s: socket.socket) -> bool:
    """Whether the gateway closed ``s`` (whose request it has not answered)."""
    try:
        return s.recv(100) == b""
    except ConnectionError:
        return True


@contextmanager
def _serving(tmp_path: Path, config: str) -> Iterator[tuple[int, str, ExitStack]]:
    """A real ``symbi serve`` of ``config`` (its port), an API key of it, and a stack that
    closes the test's connections before the server stops."""
    cfg = write_config(tmp_path, config)
    key = _key(cfg)
    with serve_process(cfg) as (base, _proc), ExitStack() as stack:
        yield int(base.rsplit(":", 1)[1]), key, stack


def _key(cfg: Path) -> str:
    return ApiKeyStore(load_config(cfg, {}).api_keys_path).create("bob", ("developer",))[0]


async def _flood(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``n`` connections that send nothing (raw sockets: no HTTP client in the way)."""
    return list(await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n))))


async def _closed_by_server(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> int:
    async def eof(r: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(r.read(1), 0.2) == b""
        except (TimeoutError, OSError):
            return False

    return sum(await asyncio.gather(*(eof(r) for r, _ in conns)))


def test_idle_connections_cannot_crowd_out_a_legitimate_client(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path, f"[http]\nmax_connections = {CAP}\nheader_timeout_s = 120.0\nbody_timeout_s = 120.0\n"
    )
    with serve_process(cfg) as (base, proc), ExitStack() as stack:
        port = int(base.rsplit(":", 1)[1])
        before = _fds(proc.pid)
        busy = [_busy(port, stack) for _ in range(BUSY)]
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        conns = loop.run_until_complete(_flood(port, FLOOD))
        for _, w in conns:
            stack.callback(w.close)
        # the flood's connections beyond the bound are closed: the gateway's descriptors stay
        # within it (unbounded, they grew by FLOOD until the header deadline, 120 s here)
        _until(
            f"the gateway holds at most {CAP} connections",
            lambda: _fds(proc.pid) <= before + CAP + 2,
        )
        assert loop.run_until_complete(_closed_by_server(conns)) >= FLOOD - CAP
        assert _healthz(port).startswith(b"HTTP/1.1 200")  # a legitimate request is served
        for s in busy:  # no request in progress was cut for the flood
            s.sendall(REST)
            assert s.recv(100).startswith(b"HTTP/1.1 "), "a request in progress was closed"


def test_requests_without_a_credential_cannot_hold_every_connection(tmp_path: Path) -> None:
    """The attack: two requests with a credential and two without hold all four slots, each
    with its body still coming. Before session 41 an authenticated client was answered 503
    for as long as the two without kept sending (body_timeout_s, 30 s by default, and again)."""
    with _serving(tmp_path, BOUND.format(4)) as (port, key, stack):
        trusted = [_reading(port, stack, _mcp_post(key)) for _ in range(2)]
        slow = b"expect: 100-continue\r\ncontent-length: 20"
        untrusted = [
            _reading(port, stack, SLOW_POST.replace(b"content-length: 20", slow)[: -len(b"key=abc")])
            for _ in range(2)
        ]
        assert _initialize(port, key).startswith(b"HTTP/1.1 200")  # a real user is served
        assert _cut(untrusted[0])  # the oldest request without a credential gave way
        assert _healthz(port).startswith(b"HTTP/1.1 200")
        for s in trusted:  # the requests with a credential were never cut
            assert _answered_after(s) == 200, "a request with a credential was closed"


def test_with_every_connection_busy_with_a_credential_a_new_one_is_answered_503(tmp_path: Path) -> None:
    with _serving(tmp_path, BOUND.format(4)) as (port, key, stack):
        busy = [_reading(port, stack, _mcp_post(key)) for _ in range(4)]
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            assert s.recv(200).startswith(b"HTTP/1.1 503")  # before it even asked
            assert s.recv(200) == b""
        # one request ends: its connection is idle, and can give way
        assert _answered_after(busy[0]) == 200
        assert _healthz(port).startswith(b"HTTP/1.1 200")
        log = next(tmp_path.glob("serve-*.log")).read_text()
    assert (
        1 <= log.count("none idle: refused") <= 2
    )  # logged, throttled: a caller without credentials causes it


@pytest.fixture
def agents_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The served gateway's temp dir, where its agents' socket is: short (a Unix socket's
    path is at most 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="f41-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_full_tcp_port_leaves_the_agents_socket_its_own_connections(
    agents_tmp: Path, tmp_path: Path
) -> None:
    """The attack: requests with a credential fill http.max_connections on TCP. Before session
    41 the agents' Unix socket counted against the same bound: every hosted agent was 503."""
    with _serving(tmp_path, BOUND.format(4) + AGENT) as (port, key, stack):
        [agents] = map(str, agents_tmp.glob("symbi-agents-*/gateway.sock"))
        tcp = [_reading(port, stack, _mcp_post(key)) for _ in range(4)]
        assert _refused(port)
        assert _healthz(agents).startswith(b"HTTP/1.1 200")  # a hosted agent is still served
        assert _answered_after(tcp[0]) == 200


def test_the_agents_socket_is_bounded_by_its_own_key(agents_tmp: Path, tmp_path: Path) -> None:
    """http.max_agent_connections bounds the agents' socket (and a full one leaves TCP be)."""
    with _serving(tmp_path, BOUND.format(4) + "max_agent_connections = 2\n" + AGENT) as (port, key, stack):
        [agents] = map(str, agents_tmp.glob("symbi-agents-*/gateway.sock"))
        held = [_reading(agents, stack, _mcp_post(key)) for _ in range(2)]
        assert _refused(agents)
        assert _healthz(port).startswith(b"HTTP/1.1 200")
        assert _answered_after(held[0]) == 200
        assert _healthz(agents).startswith(b"HTTP/1.1 200")


def test_the_agents_bound_without_agents_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_agent_connections"):
        load_config(write_config(tmp_path, "[http]\nmax_agent_connections = 8\n"), {})


def test_the_bound_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        load_config(write_config(tmp_path, "[http]\nmax_connections = 0\n"), {})


ENSURE = """
import resource, sys
from gateway.errors import ConfigError
from gateway.server import connections
hard, explicit = int(sys.argv[1]), sys.argv[2] == "explicit"
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
connections.open_files_ceiling = lambda: hard  # as for a gateway without CAP_SYS_RESOURCE
try:
    got = connections.ensure_open_files(4096, explicit=explicit)
except ConfigError as e:
    print("refused", "http.max_connections" in e.message)
else:
    print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


@pytest.mark.parametrize(
    ("hard", "how", "said"),
    [
        (8192, "explicit", "4096 5120"),  # raised to hold them
        (4096, "explicit", "refused True"),  # a value the operator set: refused, naming the key
        (4096, "default", "3072 4096"),  # the default on a smaller host: lowered, and it starts
        (1024, "default", "512 1024"),
    ],
)
def test_the_open_file_limit_is_raised_to_hold_them_or_the_start_refused(
    hard: int, how: str, said: str
) -> None:
    """A soft limit of 1,024 is common (systemd's default): the bound would be no bound. The
    default (4,096 + 1,024 of the gateway's own) is lowered on a host that cannot hold it: a
    fresh install's `make run` must start. (The seam: the ceiling pinned to the hard limit; this
    test runs as root, which may raise it.)"""
    if hard > resource.getrlimit(resource.RLIMIT_NOFILE)[1]:
        pytest.skip("this machine's hard open-file limit is lower")
    out = subprocess.run(
        [sys.executable, "-c", ENSURE, str(hard), how], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == said, out.stderr
