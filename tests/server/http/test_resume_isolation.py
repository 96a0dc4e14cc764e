"""Resuming an SSE stream replays the resuming session's own events, never another session's.

The SDK hands one event store to every session and names streams by request id (``"2"``) or
``_GET_stream``, which every session reuses; event ids were a counter. The attack: a second
principal opens its own session and asks to resume from an event id of the first one's
stream (``Last-Event-ID``), hoping to be replayed that stream's tool results.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx

from tests.server.http.conftest import bearer, everything_config, make_keys, run_server

PROTOCOL = "2025-11-25"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "r", "version": "1"}},
}


def _open(client: httpx.Client, mcp: str, key: str) -> dict[str, str]:
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
    return h


def _event_ids(sse: str) -> list[str]:
    return [line[3:].strip() for line in sse.splitlines() if line.startswith("id:")]


def _resume(mcp: str, h: dict[str, str], last_event_id: str, seconds: float = 2.0) -> tuple[int, str]:
    """GET with Last-Event-ID; what arrives within ``seconds`` (the stream stays open)."""
    got: list[str] = []
    status = [0]

    def read() -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(seconds)) as c,
                c.stream(
                    "GET", mcp, headers={**h, "Accept": "text/event-stream", "Last-Event-ID": last_event_id}
                ) as r,
            ):
                status[0] = r.status_code
                for chunk in r.iter_text():
                    got.append(chunk)
        except httpx.ReadTimeout:
            pass  # the stream stays open: what came until now is the answer

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(seconds + 1)
    return status[0], "".join(got)


def test_a_session_cannot_resume_another_sessions_stream(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        a = _open(client, run.mcp, keys.user)
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "everything__echo", "arguments": {"message": "secret-of-bob"}},
        }
        r = client.post(run.mcp, json=call, headers=a)
        assert r.headers["content-type"].startswith("text/event-stream") and "secret-of-bob" in r.text
        ids = _event_ids(r.text)
        assert ids, r.text  # a priming event id: the stream is resumable
        # the owner can resume its own stream (the baseline: replay works at all)
        _, own = _resume(run.mcp, a, ids[0])
        assert "secret-of-bob" in own
        # carol, in her own session, asks for bob's stream after its priming event
        b = _open(client, run.mcp, keys.other_user)
        for eid in {ids[0], *(str(n) for n in range(0, 8))}:
            _, stolen = _resume(run.mcp, b, eid, seconds=1.0)
            assert "secret-of-bob" not in stolen, eid
        # and a stream of carol's own with the same request id does not replay bob's either
        r = client.post(
            run.mcp,
            json={**call, "params": {"name": "everything__echo", "arguments": {"message": "carol"}}},
            headers=b,
        )
        _, mine = _resume(run.mcp, b, _event_ids(r.text)[0])
        assert "secret-of-bob" not in mine and "carol" in mine
        json.dumps(mine)


def test_resuming_finished_calls_holds_no_connection_open(tmp_path: Path) -> None:
    # Attack: one session resumed each of its finished calls' streams; every GET stayed open
    # (the SDK registered a stream for a request that had ended), past every connection limit.
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=30) as client:
        h = _open(client, run.mcp, keys.user)
        primes = []
        for n in range(20):
            call = {
                "jsonrpc": "2.0",
                "id": 100 + n,
                "method": "tools/call",
                "params": {"name": "everything__echo", "arguments": {"message": f"m{n}"}},
            }
            primes.append(_event_ids(client.post(run.mcp, json=call, headers=h).text)[0])
        for n, eid in enumerate(primes):
            r = client.get(
                run.mcp,
                headers={**h, "Accept": "text/event-stream", "Last-Event-ID": eid},
                timeout=httpx.Timeout(10.0),  # an open stream would end in ReadTimeout
            )
            assert r.status_code == 200 and f"m{n}" in r.text  # replayed, then closed
