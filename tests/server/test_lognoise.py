"""The warnings any caller causes without credentials are throttled (``gateway.server.lognoise``)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

from gateway.server.lognoise import WINDOW_S, NoiseThrottle
from tests.conftest import write_config
from tests.server._http import serve_process

GARBAGE = b"GARBAGE\r\n\r\n"
UPGRADE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
SLOW = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # never finished: cut at header_timeout_s


def test_connections_without_credentials_do_not_write_a_line_each(tmp_path: Path) -> None:
    """Attack: a malformed request, an ``Upgrade: websocket`` request (two lines) and headers
    never finished each wrote a warning: 60 connections with no credentials wrote 100 lines
    (20,000 lines in 20 s from one client holding connections open). Now the first of each and
    no more within the window; the gateway still answers. The throttle passes a line at most
    once per window, so the lines allowed follow from how long the connections took (a loaded
    machine may take longer than one window; they were all written before the last answer)."""
    cfg = write_config(tmp_path, "[http]\nheader_timeout_s = 1.0\n")
    with serve_process(cfg) as (base, _proc):
        port = int(base.rsplit(":", 1)[1])
        began = time.monotonic()  # the server's lines come after: CLOCK_MONOTONIC is system-wide
        for request, status in ((GARBAGE, b"400"), (UPGRADE, b"200")):  # the upgrade: served as HTTP
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(request)
                    assert s.recv(100).startswith(b"HTTP/1.1 " + status)
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        for s in slow:
            s.sendall(SLOW)
        for s in slow:
            assert s.recv(100) == b""  # closed by the header deadline
            s.close()
        most = 1 + int((time.monotonic() - began) // WINDOW_S)  # 1 but on a stalled machine
        log = next(tmp_path.glob("serve-*.log")).read_text()
    for line in (
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
        "No supported WebSocket library detected",
        "request headers not received within",
    ):
        assert 1 <= log.count(line) <= most, (line, most)  # 20 each without the throttle


class Clock:
    """The throttle's clock, set by the test (a window of real seconds would make it slow)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, args, None)


def test_the_next_line_after_a_window_counts_what_was_left_out() -> None:
    clock = Clock()
    throttle = NoiseThrottle(window_s=10.0, clock=clock)
    template = "request headers not received within %.0f s: closing"
    assert throttle.filter(_record(template, 10.0))
    assert not any(throttle.filter(_record(template, 10.0)) for _ in range(5))
    assert throttle.filter(_record("Invalid HTTP request received."))  # its own window
    other = _record("Exception in ASGI application")  # not a caller's noise: always passes
    assert all(throttle.filter(other) for _ in range(3)) and other.msg == "Exception in ASGI application"
    clock.now = 10.5
    summary = _record(template, 10.0)
    assert throttle.filter(summary)
    assert "5 more like it" in summary.getMessage() and "10 s: closing" in summary.getMessage()
    fresh = _record(template, 10.0)
    clock.now = 30.0
    assert (
        throttle.filter(fresh) and fresh.getMessage() == "request headers not received within 10 s: closing"
    )
