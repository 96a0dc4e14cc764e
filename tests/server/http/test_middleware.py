"""The HTTP front's headers, parsed once per request (``gateway.server.principals.scope_headers``):
every layer (Host guard, authentication, session quota, session scope, the fast lane) reads the
value the SDK's own checks read, also when a header is repeated to play one layer against
another."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
from pathlib import Path

import httpx
from starlette.datastructures import Headers

from gateway.server.principals import scope_headers
from tests.server.http.conftest import bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

RAW = [
    (b"host", b"127.0.0.1:8080"),
    (b"mcp-session-id", b"first"),
    (b"Content-Type", b"application/json"),
    (b"mcp-session-id", b"second"),
    (b"x-latin", "caf\xe9".encode("latin-1")),
]


def test_a_repeated_header_reads_as_starlette_reads_it() -> None:
    scope = {"type": "http", "headers": RAW}
    parsed = scope_headers(scope)
    starlette = Headers(scope=scope)
    for name in ("host", "mcp-session-id", "content-type", "x-latin", "authorization"):
        assert parsed.get(name) == starlette.get(name)
    assert parsed["mcp-session-id"] == "first"  # the first of a repeated header, as the SDK reads it
    assert "content-type" not in parsed  # a name the server did not lower-case: not read, by either


def test_the_parse_is_kept_per_request_and_redone_for_new_headers() -> None:
    scope = {"type": "http", "headers": RAW}
    parsed = scope_headers(scope)
    Headers(scope=scope)  # Starlette puts a copy of the list in the scope: the same headers
    assert scope["headers"] is not RAW and scope_headers(scope) is parsed
    scope["headers"] = [(b"mcp-session-id", b"other")]  # a layer that changes the headers
    assert scope_headers(scope) == {"mcp-session-id": "other"}


def _call(rid: int) -> bytes:
    msg = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "everything__echo", "arguments": {"message": "hi"}},
    }
    return json.dumps(msg).encode()


def test_repeated_headers_cannot_reach_another_principals_session(tmp_path: Path) -> None:
    """Attack: carol repeats ``mcp-session-id`` (bob's first) or ``Authorization`` (her key
    first, bob's second) or ``Host`` (a foreign one first) on a tools/call: each layer and the
    SDK read the first value, so none of it reaches bob's session; her own session still works."""
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        sessions = {}
        for who, key in (("bob", keys.user), ("carol", keys.other_user)):
            r = client.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(key)})
            assert r.status_code == 200
            sessions[who] = r.headers["mcp-session-id"]
            h = {**MCP_HEADERS, **bearer(key), "mcp-session-id": sessions[who]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert client.post(run.mcp, json=initialized, headers=h).status_code == 202
        lane = run.state.lane
        assert lane is not None
        base = [(k, v) for k, v in MCP_HEADERS.items()] + [("mcp-protocol-version", "2025-11-25")]
        carol = ("authorization", f"Bearer {keys.other_user}")
        bob = ("authorization", f"Bearer {keys.user}")
        taken = lane.taken
        for headers in (
            [*base, carol, ("mcp-session-id", sessions["bob"]), ("mcp-session-id", sessions["carol"])],
            [*base, carol, bob, ("mcp-session-id", sessions["bob"])],
        ):
            assert client.post(run.mcp, content=_call(7), headers=headers).status_code == 404
        assert lane.taken == taken  # refused by the SDK, never served by the lane
        # a foreign Host first (httpx refuses to send two: a raw request)
        with socket.create_connection(("127.0.0.1", int(run.base.rsplit(":", 1)[1])), timeout=10) as raw:
            body = _call(8)
            raw.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: evil.example\r\nHost: 127.0.0.1\r\n"
                + f"Authorization: Bearer {keys.user}\r\nmcp-session-id: {sessions['bob']}\r\n".encode()
                + b"Accept: application/json, text/event-stream\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert raw.recv(4096).startswith(b"HTTP/1.1 421 ")
        # carol's own session, her session id first: served (by the lane), in her session
        own = [*base, carol, ("mcp-session-id", sessions["carol"]), ("mcp-session-id", sessions["bob"])]
        r = client.post(run.mcp, content=_call(9), headers=own)
        assert r.status_code == 200 and r.headers["mcp-session-id"] == sessions["carol"]
        assert '"id":9' in r.text and "Echo: hi" in r.text
        assert lane.taken == taken + 1


def test_the_host_guard_remembers_only_what_passed() -> None:
    """``HostGuard.refusal`` keeps the Host/Origin pairs that passed: a foreign Host or Origin
    after an allowed one (same other value) is still refused, every time."""
    from mcp.server.transport_security import TransportSecuritySettings

    from gateway.server.middleware import HostGuard

    settings = TransportSecuritySettings(
        allowed_hosts=["127.0.0.1:*"], allowed_origins=["http://127.0.0.1:*"]
    )
    guard = HostGuard(lambda *_: None, settings)  # type: ignore[arg-type]
    ok = {"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:8080"}
    for _ in range(2):
        assert guard.refusal(ok) is None
        assert guard.refusal({"host": "127.0.0.1:8080"}) is None
        for bad, status in (
            ({"host": "evil.example:8080", "origin": ok["origin"]}, 421),
            ({"host": ok["host"], "origin": "http://evil.example"}, 403),
            ({"origin": ok["origin"]}, 421),  # no Host at all
            # a wildcard port is a port: not any text after the host's prefix
            ({"host": ok["host"], "origin": "http://127.0.0.1:1@evil.example"}, 403),
            ({"host": "127.0.0.1:evil.example", "origin": ok["origin"]}, 421),
            ({"host": "127.0.0.1:８０", "origin": ok["origin"]}, 421),
        ):
            refusal = guard.refusal(bad)
            assert refusal is not None and refusal.status_code == status


def test_a_made_up_key_learns_nothing_of_the_key_store_while_it_is_down(tmp_path: Path) -> None:
    """Attack: with the API keys in PostgreSQL and PostgreSQL down, any caller sending a
    made-up key got a 503 naming the database: its user, host, port and database name. The
    refusal stays (fail closed, 503 ``state_unavailable``); where the store is goes to the
    operator (/api/status, the log), not to a caller nobody has authenticated."""
    from tests.state.engines import Postgres

    (tmp_path / "pg").mkdir()
    pg = Postgres(tmp_path / "pg")
    pg.start()
    try:
        cfg = everything_config(tmp_path, top_extra=f'[state]\npostgres_url = "{pg.url}"\ntimeout_s = 1.0')
        with run_server(cfg) as run:
            pg.stop()
            made_up = "symbi_0123456789ab_" + "x" * 43
            r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(made_up)}, timeout=30)
            assert r.status_code == 503 and r.json()["code"] == "state_unavailable"
            for secret in (f"127.0.0.1:{pg.port}", str(pg.port), "symbi@", "/postgres"):
                assert secret not in r.text
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
