"""The wrk driver's reply check (bench/_wrk.py): issue 16's "0 misrouted" under wrk is only
worth what its Lua script catches. Real wrk against a real HTTP server on 127.0.0.1; the server
is a small one made here that answers right, misroutes or fails on purpose (a real gateway that
misroutes cannot be had on purpose: the one seam faked)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bench._wrk import _lua_string, _script, _wrk
from tests.local_http import serving

SESSIONS = [("sid-1", "2025-11-25", "key-a"), ("sid-2", "2025-11-25", "key-b")]


class _Echo(BaseHTTPRequestHandler):
    """``tools/call`` echo; ``mode`` (on the server) says how to answer wrongly."""

    protocol_version = "HTTP/1.1"  # keep-alive: wrk holds one connection per thread
    server: _Server

    def do_POST(self) -> None:
        doc = json.loads(self.rfile.read(int(self.headers["content-length"])))
        sessions = {s[0]: s[2] for s in SESSIONS}
        assert self.headers["authorization"] == f"Bearer {sessions[self.headers['mcp-session-id']]}"
        rid, message = doc["id"], doc["params"]["arguments"]["message"]
        status, mode = 200, self.server.mode
        with self.server.lock:  # the previous call, of any connection: a reply sent to the wrong one
            prev, self.server.prev = self.server.prev, (rid, message)
        if mode == "swap" and prev is not None:
            rid, message = prev
        elif mode == "fail":
            status = 503
        content = [{"type": "text", "text": f"Echo: {message}"}]
        body = {"jsonrpc": "2.0", "id": rid, "result": {"content": content, "isError": mode == "tool-error"}}
        if mode == "sse":
            data = b"event: message\nid: e1\ndata: " + json.dumps(body).encode() + b"\n\n"
            ctype = "text/event-stream"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mode = "ok"
    prev: tuple[int, str] | None = None
    lock = threading.Lock()


@pytest.fixture
def server() -> Iterator[_Server]:
    with serving(_Server(("127.0.0.1", 0), _Echo)) as srv:
        yield srv


def _run(server: _Server, tmp_path: Path, mode: str) -> dict[str, Any]:
    server.mode = mode
    url = f"http://127.0.0.1:{server.server_address[1]}/mcp"
    row, cpu = _wrk(url, _script(tmp_path / "s.lua", SESSIONS, "run-x", "everything__echo"), 2, 1)
    assert cpu >= 0.0
    return row


@pytest.mark.parametrize("mode", ["ok", "sse"])
def test_each_calls_own_reply_is_ok(server: _Server, tmp_path: Path, mode: str) -> None:
    row = _run(server, tmp_path, mode)
    assert row["ok"] > 0
    assert (row["misrouted"], row["errors"], row["socket_errors"]) == (0, 0, 0)
    assert row["ok"] == row["requests"]


def test_a_reply_meant_for_another_call_is_misrouted(server: _Server, tmp_path: Path) -> None:
    row = _run(server, tmp_path, "swap")
    assert row["misrouted"] > 0
    assert row["ok"] <= 1  # at most the very first call, answered before any swap


@pytest.mark.parametrize("mode", ["fail", "tool-error"])
def test_a_failed_or_wrong_reply_is_an_error(server: _Server, tmp_path: Path, mode: str) -> None:
    row = _run(server, tmp_path, mode)
    assert row["errors"] > 0
    assert (row["ok"], row["misrouted"]) == (0, 0)


def test_a_session_value_that_would_need_escaping_is_refused() -> None:
    with pytest.raises(ValueError):
        _lua_string('abc"; os.execute("x")')
