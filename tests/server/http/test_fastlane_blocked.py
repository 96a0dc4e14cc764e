"""A client that does not read its answer, then cancels the call and reuses its id (the HTTP
front, lane on and off, SSE and JSON).

The lane frees a call's id once the call has settled, before its outcome is written on its
POST's response; the SDK's transport routes an answer by id. So a POST whose answer is still
being written (the client reads nothing: its socket buffer and the server's are full) while the
client cancels the call and posts a request of the same id must not let one answer reach the
other request: on HTTP each POST's answer rides its own response, the late answer stays on the
first POST's. The reuse is refused (Invalid Request, HTTP 400) or served with its own answer:
the SDK's SSE answer holds the id's stream until its last (blocked) write, so it refuses; the
lane's SSE and JSON answers and the SDK's JSON answer are one last body chunk, which uvicorn
takes into its transport's buffer without waiting for the client: the id is free, the reuse
served. Nothing crosses on any path (kept as the attack's regression test)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import struct
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import types

from tests.server.http.conftest import make_keys, run_server
from tests.server.http.test_fastlane import ECHO, HEADERS, Gw, _config, call, open_session, post, replies

MB = 8  # the first call's answer: more than the client's and the server's socket buffers hold


@contextlib.contextmanager
def _gateway(tmp: Path, lane: bool, mode: str) -> Iterator[Gw]:
    cfg, record = _config(tmp, lane, mode)
    cfg.write_text(cfg.read_text().replace("[mcp]\n", "[mcp]\nmax_message_bytes = 33554432\n", 1))
    data = tmp / "policy-data.json"  # the result cap too (the repo's test policy: 1 MB)
    doc = json.loads(data.read_text())
    doc["symbi_data"]["max_result_bytes"] = {"*": 4 * MB * 1024 * 1024}
    data.write_text(json.dumps(doc))
    keys = make_keys(cfg)
    with run_server(cfg) as running:
        yield Gw(running, keys, cfg, record, mode)


def _unread_post(gw: Gw, body: dict[str, object], key: str, sid: str) -> socket.socket:
    """``body`` POSTed on a raw socket with the smallest receive buffer, not read."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    s.connect(("127.0.0.1", int(gw.run.base.rsplit(":", 1)[1])))
    data = json.dumps(body).encode()
    head = {**HEADERS, "Authorization": f"Bearer {key}", "mcp-session-id": sid, "Connection": "close"}
    lines = ["POST /mcp HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    return s


def _unread(s: socket.socket) -> int:
    n: int = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
    return n


def _peek(s: socket.socket) -> bytes:
    try:
        return s.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def _stalled(s: socket.socket) -> int:
    """Waits until the first call's result has begun to arrive (the call has settled: its
    answer is being written; the client's tiny buffer then holds it up); how much it holds."""
    end = time.monotonic() + 120
    while b"x" * 256 not in _peek(s):
        assert time.monotonic() < end, "the first call's answer never started"
        time.sleep(0.2)
    return _unread(s)


def _read_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(1 << 20):
        chunks.append(chunk)
    s.close()
    return b"".join(chunks)


@pytest.mark.parametrize("mode", ["sse", "json"])
@pytest.mark.parametrize("lane", [True, False])
def test_a_late_answer_never_reaches_a_reuse_of_its_id(tmp_path: Path, lane: bool, mode: str) -> None:
    with _gateway(tmp_path, lane, mode) as gw:
        k = gw.keys.admin
        sid = open_session(gw, k)
        first = _unread_post(gw, call(7, "mut__huge", {"megabytes": MB}), k, sid)
        held = _stalled(first)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7}}
        assert post(gw, cancel, k, sid).status_code == 202
        second = post(gw, call(7, ECHO, {"message": "second"}), k, sid)
        [answer] = replies(second)
        assert answer["id"] == 7
        if second.status_code == 400:  # the id still in flight (the SDK's SSE stream holds it)
            assert answer["error"]["code"] == types.INVALID_REQUEST
        else:  # freed once the answer was made: served, with its own answer
            assert (second.status_code, answer["result"]["content"][0]["text"]) == (200, "Echo: second")
        raw = _read_all(first)
        # the first's answer was still being written: more than the socket buffers hold was left
        assert len(raw) - held > 4 * 1024 * 1024 + 65536
        assert b"Echo: second" not in raw
        assert b'"id":7' in raw.replace(b" ", b"") and b"x" * 65536 in raw  # its own answer
        third = post(gw, call(7, ECHO, {"message": "third"}), k, sid)
        assert [m["result"]["content"][0]["text"] for m in replies(third)] == ["Echo: third"]
