"""The test harness's servers (tests/server/_http.py, tests/conftest.py): a server that answers
on a test's port is the one the test started, and a port one pytest run handed out is not
handed out by another run at the same time."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.conftest as harness
from tests.conftest import free_port, port_owner, write_config
from tests.server import _http
from tests.server._http import PortTaken, serve_process

CONFIG = "[sandbox]\ncode_tools = false\n"


class _AlwaysReady(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the stdlib calls it by this name
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _another_server(port: int) -> Iterator[None]:
    """Another run's server on ``port``: it answers 200 to everything."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _AlwaysReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_another_server_on_the_given_port_is_not_taken_for_the_gateway(tmp_path: Path) -> None:
    port = free_port()
    with _another_server(port), pytest.raises(PortTaken):
        with serve_process(write_config(tmp_path, CONFIG), port=port):
            pass


def test_a_free_port_taken_first_by_another_server_is_given_up_for_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = free_port()
    ports = iter([taken, free_port()])
    monkeypatch.setattr(_http, "free_port", lambda: next(ports))
    with _another_server(taken), serve_process(write_config(tmp_path, CONFIG)) as (base, proc):
        assert not base.endswith(f":{taken}")
        assert port_owner(proc.pid, int(base.rsplit(":", 1)[1])) is True
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        assert port_owner(proc.pid, taken) is False  # the other's, as seen from the gateway


def test_a_port_another_pytest_run_holds_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    os.close(harness._handed_out.pop(port))  # as if this run had never handed it out
    holder = subprocess.Popen(  # the other run: it holds the port's lock
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)",
            str(harness._PORT_LOCKS / str(port)),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(harness, "_PORTS", range(port, port + 1))
        assert free_port() != port
    finally:
        holder.kill()
        holder.wait()
    assert free_port() == port  # its lock went with the other run, and is this run's now
    fd = os.open(harness._PORT_LOCKS / str(port), os.O_RDWR)
    try:
        with pytest.raises(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
