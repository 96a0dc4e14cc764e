"""``mcp.max_concurrent_connections``: the HTTP front holds at most that many open MCP
connections; one more is refused at once with 503 + a typed JSON-RPC error, and a freed slot
is usable again."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.http.conftest import Running, bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

pytestmark = pytest.mark.npm
LIMIT = 2


@contextlib.contextmanager
def listen_stream(run: Running, key: str) -> Iterator[httpx.Response]:
    """One MCP session with its GET listen stream held open (one connection)."""
    r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)}, timeout=10)
    assert r.status_code == 200, r.text
    h = {**bearer(key), "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(run.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
               headers={**MCP_HEADERS, **h}, timeout=10)
    with httpx.Client(timeout=30) as c, c.stream("GET", run.mcp, headers={**h, "Accept": "text/event-stream"}) as s:
        assert s.status_code == 200
        yield s


def test_connections_beyond_the_limit_are_refused_until_one_closes(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, top_extra=f"[mcp]\nmax_concurrent_connections = {LIMIT}\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run, contextlib.ExitStack() as streams:
        streams.enter_context(listen_stream(run, keys.user))
        with listen_stream(run, keys.user):
            r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)}, timeout=10)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            err = r.json()["error"]
            assert err["data"]["code"] == "too_many_connections" and str(LIMIT) in err["message"]
            # other routes are not MCP connections and stay served
            assert httpx.get(run.base + "/healthz").status_code == 200
        # the freed slot serves the next connection
        deadline = time.monotonic() + 10
        while True:
            r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)}, timeout=10)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200


def test_a_refused_connection_needs_credentials_first(tmp_path: Path) -> None:
    """Unauthenticated requests never take a slot (the limit sits behind authentication)."""
    cfg = everything_config(tmp_path, top_extra="[mcp]\nmax_concurrent_connections = 1\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run, listen_stream(run, keys.user):
        r = httpx.post(run.mcp, json=INIT, headers=MCP_HEADERS, timeout=10)
        assert r.status_code == 401
