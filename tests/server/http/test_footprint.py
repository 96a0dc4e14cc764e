"""Session churn leaves nothing behind: open and close many real HTTP sessions against a real
gateway on 127.0.0.1 and count every per-session / per-principal / per-tool structure.

HTTP, not stdio: one stdio gateway process serves exactly one session, so churning sessions
over stdio would measure process start-up, not the gateway's state. Each session here is a
full MCP session (initialize, initialized, one tools/call through policy + audit, DELETE),
by one of three principals.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
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


def _payload(r: httpx.Response) -> dict[str, Any]:
    if r.headers.get("content-type", "").startswith("application/json"):
        return dict(r.json())
    data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return dict(json.loads(data[-1]))


def one_session(client: httpx.Client, mcp: str, key: str, n: int) -> None:
    r = client.post(mcp, json=INIT, headers={**HEADERS, **bearer(key)})
    assert r.status_code == 200, r.text
    h = {
        **HEADERS,
        **bearer(key),
        "mcp-session-id": r.headers["mcp-session-id"],
        "mcp-protocol-version": PROTOCOL,
    }
    assert (
        client.post(
            mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h
        ).status_code
        == 202
    )
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": f"m{n}"}},
    }
    reply = _payload(client.post(mcp, json=call, headers=h))
    assert reply["result"]["content"][0]["text"].endswith(f"m{n}"), reply
    assert client.delete(mcp, headers=h).status_code in (200, 204)


def state(client: httpx.Client, base: str, admin: str) -> dict[str, Any]:
    gc.collect()  # weak sets (downstream connections) let go on collection
    r = client.get(base + "/api/state", headers=bearer(admin))
    assert r.status_code == 200, r.text
    return dict(r.json())


def churn(tmp_path: Path, sessions: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    users = [keys.user, keys.other_user, keys.admin]
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        for i, key in enumerate(users):  # warm-up: every principal, label set and cache exists
            one_session(client, run.mcp, key, i)
        state(client, run.base, keys.admin)  # (the /api/state request has a metrics label set too)
        start = settled(client, run.base, keys.admin, lambda s: s["owned"]["downstream_connections"] == 0)
        peak: dict[str, Any] = {}
        for n in range(sessions):
            one_session(client, run.mcp, users[n % len(users)], n)
            if n == sessions // 2:
                peak = state(client, run.base, keys.admin)
        end = settled(client, run.base, keys.admin, lambda s: s["owned"] == start["owned"])
    return start, peak, end


def settled(
    client: httpx.Client, base: str, admin: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The state once ``done`` holds (session tasks finish shortly after DELETE), or at 30 s."""
    deadline = time.monotonic() + 30
    s = state(client, base, admin)
    while not done(s) and time.monotonic() < deadline:
        time.sleep(0.2)
        s = state(client, base, admin)
    return s


def check(start: dict[str, Any], peak: dict[str, Any], end: dict[str, Any]) -> None:
    assert end["owned"] == start["owned"]
    for name, size in end["bounded"].items():
        assert size <= end["caps"][name], name
    assert start["owned"]["sessions"] == 0
    assert peak["owned"]["counters_principals"] == 3  # one entry per principal, not per call


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ten_thousand_sessions_leave_the_state_where_it_started(tmp_path: Path) -> None:
    check(*churn(tmp_path, 10_000))


def test_session_churn_small(tmp_path: Path) -> None:
    """The same check on 200 sessions (the quick version that runs with the fast suite)."""
    check(*churn(tmp_path, 200))
