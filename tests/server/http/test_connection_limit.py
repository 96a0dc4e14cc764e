"""``mcp.max_concurrent_connections``: the HTTP front serves at most that many MCP requests at
once; one more is refused at once with 503 + a typed JSON-RPC error, and a freed slot is
usable again."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.server.limits import ConnectionLimit
from tests.server.http.conftest import Running, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

pytestmark = pytest.mark.npm
LIMIT = 2


def _session(run: Running, key: str) -> dict[str, str]:
    r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)}, timeout=10)
    assert r.status_code == 200, r.text
    h = {
        **MCP_HEADERS,
        **bearer(key),
        "mcp-session-id": r.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    httpx.post(run.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, timeout=10)
    return h


@contextlib.contextmanager
def held_requests(run: Running, key: str, n: int) -> Iterator[list[int]]:
    """``n`` tool calls in flight (server-everything's long-running operation, a few seconds)."""
    statuses: list[int] = []
    heads = [_session(run, key) for _ in range(n)]
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {
            "name": "everything__trigger-long-running-operation",
            "arguments": {"duration": 6, "steps": 2},
        },
    }

    def post(h: dict[str, str]) -> None:
        statuses.append(httpx.post(run.mcp, json=call, headers=h, timeout=60).status_code)

    threads = [threading.Thread(target=post, args=(h,)) for h in heads]
    for t in threads:
        t.start()
    try:
        _wait_in_flight(run, n)
        yield statuses
    finally:
        for t in threads:
            t.join(60)


def _limit(run: Running) -> ConnectionLimit:
    """The app's ConnectionLimit middleware (to wait until the held calls are in flight)."""
    app = run.server.config.app
    node: object = getattr(app, "middleware_stack", None)
    while node is not None and not isinstance(node, ConnectionLimit):
        node = getattr(node, "app", None)
    assert isinstance(node, ConnectionLimit)
    return node


def _wait_in_flight(run: Running, n: int) -> None:
    deadline = time.monotonic() + 20
    while _limit(run).open < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _limit(run).open == n


def _post_until(run: Running, key: str, want: int) -> httpx.Response:
    deadline = time.monotonic() + 20
    while True:
        r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)}, timeout=10)
        if r.status_code == want or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_requests_beyond_the_limit_are_refused_until_one_ends(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, top_extra=f"[mcp]\nmax_concurrent_connections = {LIMIT}\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        with held_requests(run, keys.admin, LIMIT) as statuses:
            r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)}, timeout=10)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["data"]["code"] == "too_many_connections" and str(LIMIT) in err["message"]
            # other routes are not MCP requests and stay served
            assert httpx.get(run.base + "/healthz").status_code == 200
        assert statuses == [200] * LIMIT  # the held requests were served, not dropped
        assert _post_until(run, keys.user, 200).status_code == 200  # freed slots serve again


def test_unauthenticated_requests_take_no_slot(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, top_extra="[mcp]\nmax_concurrent_connections = 1\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run, held_requests(run, keys.admin, 1):
        assert httpx.post(run.mcp, json=INIT, headers=MCP_HEADERS, timeout=10).status_code == 401
        refused = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)}, timeout=10)
        assert refused.status_code == 503
