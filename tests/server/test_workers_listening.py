"""``symbi serve --workers 2``: a session that only listens stays on its worker.

A client may hold just the session's standalone GET stream (server-to-client notifications)
and send nothing for longer than the front's stick expiry. The worker keeps the session all
that time (an open stream is a request in flight: its idle count has not started), so the
front must keep the session's stick entry as long. HAProxy refreshes an entry when a request
matches it; now a request of a session the table knows also holds the entry while it runs and
refreshes it when it ends (``haproxy_config``: ``track-sc0``, and the table stores
``conn_cur``), as the worker starts the idle count then. Real workers behind the supervisor's HAProxy, on real Redis and
PostgreSQL; raw HTTP, to choose which request goes when (round robin then decides where a
request with no entry goes, and two in a row never reach the same worker).
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from gateway.config import load_config
from gateway.server.workers import PING_S, FrontLimits, front_limits, haproxy_config
from tests.conftest import free_port
from tests.server.test_workers import _api_key, _config, _front_limits, _worker_ports, supervisor
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine

pytestmark = [pytest.mark.slow]
VERSION = "2025-06-18"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@dataclass
class Front:
    base: str  # HAProxy
    key: str
    config: Path
    workers: list[int]  # the workers' own ports (behind the front)


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory,
    redis_engine: RedisEngine,  # noqa: F811 - the imported fixture
    postgres_engine: PgEngine,  # noqa: F811
) -> Iterator[Front]:
    """Short limits: sessions idle 2 s, calls 1 s: the stick expiry is 2 + 31 s (the front's
    inactivity timeout never drops below two SSE pings)."""
    folder = tmp_path_factory.mktemp("listening")
    config = _config(
        folder,
        redis_engine,
        postgres_engine,
        http="session_idle_timeout_s = 2\n",
        mcp="call_timeout_s = 1\n",
        more="[runtime.resources]\nexecution_timeout_s = 1\n",
    )
    key = _api_key(postgres_engine)
    with supervisor(config) as (base, _):
        yield Front(base, key, config, _worker_ports(config))


def _headers(key: str, sid: str | None = None) -> dict[str, str]:
    headers = {"x-api-key": key, "accept": "application/json, text/event-stream"}
    if sid is not None:
        headers |= {"mcp-session-id": sid, "mcp-protocol-version": VERSION}
    return headers


def _open_session(c: httpx.Client, front: Front) -> str:
    r = c.post(front.base + "/mcp", json=INIT, headers=_headers(front.key))
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert c.post(front.base + "/mcp", json=done, headers=_headers(front.key, sid)).status_code == 202
    return sid


_IDS = itertools.count(100)


def _ping(c: httpx.Client, url: str, key: str, sid: str) -> int:
    """The status a ping of session ``sid`` gets at ``url`` (404: that worker never heard of it)."""
    # a new id each time: a session's ids are never reused (the spec), and an id whose reply was
    # read may still be in flight at the worker for a moment (seen: 400 for the second of two)
    ping = {"jsonrpc": "2.0", "id": next(_IDS), "method": "ping"}
    return c.post(url + "/mcp", json=ping, headers=_headers(key, sid)).status_code


def _same_worker_pair(c: httpx.Client, front: Front) -> list[str]:
    """Two sessions on one worker (three sessions over two workers hold such a pair whatever
    round robin did; each worker asked directly, past the front)."""
    on: dict[int, list[str]] = {}
    for _ in range(3):
        sid = _open_session(c, front)
        [owner] = [p for p in front.workers if _ping(c, f"http://127.0.0.1:{p}", front.key, sid) == 200]
        on.setdefault(owner, []).append(sid)
    return max(on.values(), key=len)[:2]


def test_a_session_that_only_listens_past_the_stick_expiry_stays_on_its_worker(front: Front) -> None:
    """The served front, its expiry derived from the config (2 + 31 s here): two sessions of one
    worker each hold their GET stream and send nothing for longer than that, then each sends a
    ping through the front: both reach their worker (200). Before, the front had forgotten them
    (an entry was refreshed only when a request started): the pings went round robin, one to
    the other worker, which answered 404 (seen: [404, 200])."""
    expire = _front_limits(front.config)["expire"]
    with httpx.Client(timeout=10) as c, contextlib.ExitStack() as streams:
        pair = _same_worker_pair(c, front)
        for sid in pair:
            r = streams.enter_context(c.stream("GET", front.base + "/mcp", headers=_headers(front.key, sid)))
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        time.sleep(expire + 3)  # past the entries' expiry, counted from their GET's start
        assert [_ping(c, front.base, front.key, sid) for sid in pair] == [200, 200]


def _listen(front: Front, sid: str) -> socket.socket:
    """Session ``sid``'s GET stream, open (its response's head read), on a raw socket."""
    s = socket.create_connection(("127.0.0.1", int(front.base.rsplit(":", 1)[1])), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in _headers(front.key, sid).items())
    s.sendall(f"GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}\r\n".encode())
    assert s.recv(65536).startswith(b"HTTP/1.1 200")
    return s


def _show_table(sock: Path) -> dict[str, dict[str, str]]:
    """HAProxy's stick table ``workers`` by key: each entry's fields (``use``, ``exp`` in ms left,
    ``server_id``, ``conn_cur``), from its stats socket's ``show table``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        s.sendall(b"show table workers\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    rows = [dict(w.split("=", 1) for w in line.split()[1:] if "=" in w) for line in out.decode().splitlines()]
    return {row.pop("key"): row for row in rows if "key" in row}


@contextlib.contextmanager
def _front_of(front: Front, tmp_path: Path, limits: FrontLimits) -> Iterator[tuple[Front, Path]]:
    """The supervisor's front config (``haproxy_config``) with these limits in an HAProxy of the
    test's, in front of the same workers, with a stats socket added (the seam: the served front
    has none, and its stick table is what is looked at)."""
    sock = tmp_path / "haproxy.sock"
    port = free_port()
    cfg = haproxy_config("127.0.0.1", port, front.workers, limits=limits, drop_to=None)
    path = tmp_path / "haproxy.cfg"
    path.write_text(cfg.replace("global\n", f"global\n    stats socket {sock} mode 600\n", 1))
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15  # the bound of the wait for its start
        while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sock.exists(), f"haproxy did not start (status {proc.poll()})"
        yield Front(f"http://127.0.0.1:{port}", front.key, front.config, front.workers), sock
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_entry_lives_while_its_request_does_and_from_its_end(front: Front, tmp_path: Path) -> None:
    """The front's stick table with a 3 s expiry: a session's GET stream open for 5 s keeps its
    entry (held by the request: ``use=1``), and when the stream ends -- the moment the worker's
    idle count starts -- the entry gets a whole expiry again (before: gone at 3 s, while the
    stream was open; tracked without ``store conn_cur``, the entry is let go expired, and
    dropped, as the stream ends)."""
    limits = replace(front_limits(load_config(front.config, {})), stick_s=3.0)
    with _front_of(front, tmp_path, limits) as (test, sock), httpx.Client(timeout=10) as c:
        sid = _open_session(c, test)
        stream = _listen(test, sid)
        time.sleep(5)
        assert _show_table(sock)[sid]["use"] == "1"  # held by the open stream
        # the client resets its connection: HAProxy ends the stream (and its connection to the
        # worker) at its next write to it, the next keepalive ping (every PING_S seconds)
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()
        deadline = time.monotonic() + PING_S + 10  # the bound of the wait, not a timing assertion
        while (entry := _show_table(sock).get(sid, {})).get("use") == "1" and time.monotonic() < deadline:
            time.sleep(0.1)
        # the entry is older than its 3 s expiry (5 s of stream): life left is the refresh at the end
        assert entry.get("use") == "0" and int(entry["exp"]) > 0
        assert [_ping(c, test.base, test.key, sid) for _ in range(2)] == [200, 200]


def test_session_ids_the_front_never_learned_make_no_entry(front: Front, tmp_path: Path) -> None:
    """Attack: requests carrying made-up session ids. A stick entry comes only from a worker's
    answer; a request's id only keeps an entry the front already has. Were every id tracked,
    anyone could fill the table (1m entries) and push the real sessions' entries out."""
    limits = front_limits(load_config(front.config, {}))
    with _front_of(front, tmp_path, limits) as (test, sock), httpx.Client(timeout=10) as c:
        sid = _open_session(c, test)
        made_up = [secrets.token_hex(16) for _ in range(20)]
        assert {_ping(c, test.base, test.key, m) for m in made_up} == {404}
        with c.stream("GET", test.base + "/mcp", headers=_headers(test.key, made_up[0])) as r:
            assert r.status_code == 404
        assert list(_show_table(sock)) == [sid]
