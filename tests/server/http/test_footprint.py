"""Session churn leaves nothing behind: open and close many real HTTP sessions against a real
gateway on 127.0.0.1 and count every per-session / per-principal / per-tool structure.

HTTP, not stdio: one stdio gateway process serves exactly one session, so churning sessions
over stdio would measure process start-up, not the gateway's state. Each session here is a
full MCP session (initialize, initialized, one tools/call through policy + audit, DELETE),
by one of three principals.

The client is the standard library's ``http.client`` on one keep-alive connection: the
gateway runs in a thread of this process, so the client's CPU is the gateway's too, and
httpx spent about a fifth of the run.
"""

from __future__ import annotations

import gc
import http.client
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.server.http.conftest import bearer, everything_config, make_keys, run_server

PROTOCOL = "2025-11-25"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "churn", "version": "1"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Client:
    """One keep-alive HTTP/1.1 connection to the gateway (a real socket on 127.0.0.1)."""

    def __init__(self, base: str) -> None:
        url = urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)

    def request(
        self, method: str, path: str, headers: dict[str, str], body: dict[str, Any] | None = None
    ) -> tuple[int, http.client.HTTPResponse, str]:
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = self.conn.getresponse()
        return r.status, r, r.read().decode()


@contextmanager
def client_for(base: str) -> Iterator[Client]:
    c = Client(base)
    try:
        yield c
    finally:
        c.conn.close()


def _payload(r: http.client.HTTPResponse, text: str) -> dict[str, Any]:
    if (r.getheader("content-type") or "").startswith("application/json"):
        return dict(json.loads(text))
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return dict(json.loads(data[-1]))


def one_session(client: Client, key: str, n: int) -> None:
    status, r, text = client.request("POST", "/mcp", {**HEADERS, **bearer(key)}, INIT)
    assert status == 200, text
    h = {
        **HEADERS,
        **bearer(key),
        "mcp-session-id": r.getheader("mcp-session-id") or "",
        "mcp-protocol-version": PROTOCOL,
    }
    status, _, text = client.request(
        "POST", "/mcp", h, {"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    assert status == 202, text
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": f"m{n}"}},
    }
    status, r, text = client.request("POST", "/mcp", h, call)
    reply = _payload(r, text)
    assert reply["result"]["content"][0]["text"].endswith(f"m{n}"), reply
    assert client.request("DELETE", "/mcp", h)[0] in (200, 204)


def state(client: Client, admin: str) -> dict[str, Any]:
    gc.collect()  # weak sets (downstream connections) let go on collection
    status, _, text = client.request("GET", "/api/state", bearer(admin))
    assert status == 200, text
    return dict(json.loads(text))


def churn(tmp_path: Path, sessions: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    users = [keys.user, keys.other_user, keys.admin]
    with run_server(cfg) as run, client_for(run.base) as client:
        for i, key in enumerate(users):  # warm-up: every principal, label set and cache exists
            one_session(client, key, i)
        state(client, keys.admin)  # (the /api/state request has a metrics label set too)
        start = steady(client, keys.admin)
        peak: dict[str, Any] = {}
        for n in range(sessions):
            one_session(client, users[n % len(users)], n)
            if n == sessions // 2:
                peak = state(client, keys.admin)
        end = settled(client, keys.admin, lambda s: back_to(start["owned"], s["owned"]))
    return start, peak, end


def back_to(start: dict[str, int], now: dict[str, int]) -> bool:
    """Every owned structure is where it started; running tasks may be fewer, never more.

    A task that was merely passing through when the start was read (a warm-up session's
    clean-up, a periodic sweep) is gone later; one leaked per session would be 200 more.
    """
    same = {k: v for k, v in now.items() if k != "tasks"} == {k: v for k, v in start.items() if k != "tasks"}
    return same and now.get("tasks", 0) <= start.get("tasks", 0)


def steady(client: Client, admin: str) -> dict[str, Any]:
    """The start: no connection but ours, and the same owned counts on two reads in a row."""
    deadline = time.monotonic() + 30
    last = state(client, admin)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        s = state(client, admin)
        if s["owned"]["downstream_connections"] == 0 and s["owned"] == last["owned"]:
            return s
        last = s
    return last


def settled(client: Client, admin: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The state once ``done`` holds (session tasks finish shortly after DELETE), or at 30 s."""
    deadline = time.monotonic() + 30
    s = state(client, admin)
    while not done(s) and time.monotonic() < deadline:
        time.sleep(0.2)
        s = state(client, admin)
    return s


def check(start: dict[str, Any], peak: dict[str, Any], end: dict[str, Any]) -> None:
    assert back_to(start["owned"], end["owned"]), (start["owned"], end["owned"])
    for name, size in end["bounded"].items():
        assert size <= end["caps"][name], name
    assert start["owned"]["sessions"] == 0
    assert peak["owned"]["counters_principals"] == 3  # one entry per principal, not per call
    # every session made an agent with bus keys (both key stores and the in-memory ring):
    # counted in ``owned`` above, so back where they started
    for name in ("bus_local_keys", "bus_stored_keys", "bus_directory", "bus_published", "bus_ended_kept"):
        assert name in end["owned"], name


@pytest.fixture
def mem_path(tmp_path: Path) -> Iterator[Path]:
    """The gateway's folder (config, data dir) on tmpfs (/dev/shm) when there is one.

    Every tools/call's reply waits for its audit event's fsync (synchronous=FULL): on this
    machine's shared disk that was a third of a session (400 sessions, load 3-5: the call
    13-17 ms on /tmp, 9 ms on /dev/shm; the whole session 24-32 ms against 18 ms). What this
    test counts, the structures a session leaves behind, does not depend on the medium;
    durability has its own tests (tests/audit), on the disk. Else tmp_path.
    """
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="symbi-footprint-", dir=shm))
    folder.chmod(0o711)  # the upstream user runs in the config's folder (tests/conftest.py)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ten_thousand_sessions_leave_the_state_where_it_started(mem_path: Path) -> None:
    check(*churn(mem_path, 10_000))


def test_session_churn_small(mem_path: Path) -> None:
    """The same check on 200 sessions (the quick version that runs with the fast suite)."""
    check(*churn(mem_path, 200))
