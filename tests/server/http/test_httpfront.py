"""The HTTP front's one-layer path (``gateway.server.httpfront``): a POST to ``/mcp`` naming its
session runs the chain's checks in one frame. Attacks through that path on a real server: each
check refuses as the chain does (same status, same body), the path was the one taken, and the
connection limit and the access log's counts are the chain's own."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from gateway.server.httpfront import HttpFront
from tests.server.http.conftest import Running, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

pytestmark = pytest.mark.npm

MAX_BYTES = 2048


def _front(run: Running) -> HttpFront:
    node: object = getattr(run.server.config.app, "middleware_stack", None)
    while node is not None and not isinstance(node, HttpFront):
        node = getattr(node, "app", None)
    assert isinstance(node, HttpFront)
    return node


def _session(client: httpx.Client, run: Running, key: str, front: HttpFront | None = None) -> dict[str, str]:
    r = client.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)})
    assert r.status_code == 200, r.text
    if front is not None:  # a client has the whole answer a moment before the server's slot is free
        _settled(front)
    h = {**MCP_HEADERS, **bearer(key), "mcp-session-id": r.headers["mcp-session-id"]}
    h["mcp-protocol-version"] = "2025-11-25"
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    assert client.post(run.mcp, json=initialized, headers=h).status_code == 202
    return h


def _settled(front: HttpFront) -> None:
    """Wait until no MCP request holds a slot of the connection limit."""
    deadline = time.monotonic() + 10
    while front.limit.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert front.limit.open == 0


def _call(rid: int, message: str = "hi") -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": message}},
    }


def _counted(run: Running, status: int) -> float:
    """``symbi_http_requests_total`` of the MCP route with this status, as /metrics shows it."""
    text = httpx.get(run.base + "/metrics", timeout=10).text
    want = f'symbi_http_requests_total{{route="mcp",status="{status}"}} '
    return sum(float(line[len(want) :]) for line in text.splitlines() if line.startswith(want))


def _without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in names}


def test_every_check_refuses_a_session_post_as_the_chain_does(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, http_extra=f"max_request_bytes = {MAX_BYTES}")
    keys = make_keys(cfg)
    temp, rec = keys.store.create("mallory", ("developer",))
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        front = _front(run)
        bob = _session(client, run, keys.user)
        mallory = _session(client, run, temp)
        call = json.dumps(_call(2)).encode()
        attacks: list[tuple[dict[str, str], bytes, int]] = [
            ({**bob, "Host": "evil.example"}, call, 421),  # DNS rebinding
            ({**bob, "Origin": "http://evil.example"}, call, 403),
            (bob, json.dumps(_call(3, "x" * MAX_BYTES)).encode(), 413),  # body past the limit
            (_without(bob, "authorization"), call, 401),  # no credentials
            ({**bob, "Authorization": "Bearer symbi_000000000000_forged"}, call, 401),
            ({**bob, "Authorization": "Basic Ym9iOmJvYg=="}, call, 401),
        ]
        for headers, body, status in attacks:
            taken, counted = front.taken, _counted(run, status)
            r = client.post(run.mcp, content=body, headers=headers)
            assert r.status_code == status, (headers, r.text)
            assert front.taken == taken + 1  # through the one-layer path
            assert _counted(run, status) == counted + 1  # and counted by the access log
            # the chain's answer to the same request without a session id: the same refusal
            chain = client.post(run.mcp, content=body, headers=_without(headers, "mcp-session-id"))
            assert front.taken == taken + 1
            assert (chain.status_code, chain.content) == (r.status_code, r.content)
            assert chain.headers.get("www-authenticate") == r.headers.get("www-authenticate")
        # another principal's key on bob's session: the SDK's 404, never the lane
        lane = run.state.lane
        assert lane is not None
        served = lane.taken
        r = client.post(run.mcp, content=call, headers={**bob, **bearer(keys.other_user)})
        assert r.status_code == 404 and lane.taken == served
        # a revoked key is refused at once, on the very next request of its session
        assert client.post(run.mcp, json=_call(4), headers=mallory).status_code == 200
        assert keys.store.revoke(rec.id)
        r = client.post(run.mcp, json=_call(5), headers=mallory)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"
        # and bob's own call is served by the lane, through the same path
        taken, served = front.taken, lane.taken
        r = client.post(run.mcp, json=_call(6), headers=bob)
        assert r.status_code == 200 and "Echo: hi" in r.text and '"id":6' in r.text
        assert front.taken == taken + 1 and lane.taken == served + 1
        # the lane remembers header values that passed the SDK's own tests: other values of
        # those headers, in the same session, still get the SDK's refusal, never the lane
        for name, value, status in (
            ("Accept", "application/json", 406),  # an SSE session needs both types accepted
            ("Accept", "text/html", 406),
            ("Content-Type", "text/plain", 400),
            ("Content-Type", "application/jsonx", 415),
        ):
            r = client.post(run.mcp, content=call, headers={**bob, name: value})
            assert r.status_code == status and lane.taken == served + 1, (name, value, r.text)


def test_a_session_post_beyond_the_connection_limit_is_refused(tmp_path: Path) -> None:
    """The limit's count is shared: a held session POST takes the one slot, and a session POST
    (the one-layer path) as well as an initialize (the chain) are refused until it ends."""
    cfg = everything_config(tmp_path, top_extra="[mcp]\nmax_concurrent_connections = 1\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=60) as client:
        front = _front(run)
        alice = _session(client, run, keys.admin, front)  # the admin may call the long operation
        _settled(front)
        carol = _session(client, run, keys.other_user, front)
        _settled(front)
        long_call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {
                "name": "everything__trigger-long-running-operation",
                "arguments": {"duration": 10, "steps": 2},
            },
        }
        held: list[int] = []
        thread = threading.Thread(
            target=lambda: held.append(
                httpx.post(run.mcp, json=long_call, headers=alice, timeout=60).status_code
            )
        )
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while front.limit.open < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert front.limit.open == 1
            taken = front.taken
            r = client.post(run.mcp, json=_call(3), headers=carol)
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["data"]["code"] == "too_many_connections"
            assert front.taken == taken + 1
            chain = client.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.other_user)})
            assert (chain.status_code, chain.content) == (r.status_code, r.content)
        finally:
            thread.join(60)
        assert held == [200]
        _settled(front)  # the held call's slot is given back
        assert client.post(run.mcp, json=_call(4), headers=carol).status_code == 200


@pytest.mark.slow
def test_a_trickled_session_post_is_cut_off(tmp_path: Path) -> None:
    """Attack: a tools/call of an established session whose body trickles in: 408, as the chain."""
    cfg = everything_config(tmp_path, http_extra="body_timeout_s = 1.0")
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        front = _front(run)
        bob = _session(client, run, keys.user)
        taken = front.taken
        with socket.create_connection(("127.0.0.1", int(run.base.rsplit(":", 1)[1])), timeout=10) as s:
            head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 200\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in bob.items()) + "\r\n"
            s.sendall(head.encode() + b" ")
            s.settimeout(8)
            answer = s.recv(4096)  # nothing more is sent: the deadline answers
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert front.taken == taken + 1
