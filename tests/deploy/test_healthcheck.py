"""scripts/healthcheck.py, the image's HEALTHCHECK, against a real HTTP server on 127.0.0.1:
healthy only on a 200 from /healthz at the address the config gives (a wildcard bind is
reached on loopback); a 503, a refused port or a wrong path is unhealthy.

The server stands in for the gateway (a seam: only /healthz's status matters here; the
image test runs the real gateway in the container).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.local_http import serving

SCRIPT = ROOT / "scripts" / "healthcheck.py"


class _Server(ThreadingHTTPServer):
    status = 200
    hosts: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host", ""))
        code = self.server.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.hosts = []
    with serving(srv):
        yield srv


def _check(tmp_path: Path, port: int, host: str | None = None) -> int:
    cfg = tmp_path / "symbi.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n[http]\nport = {port}\n')
    env = {"SYMBI_CONFIG_PATH": str(cfg), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if host is not None:
        env["SYMBI_HTTP_HOST"] = host
    r = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return r.returncode


def test_healthy_on_200_at_the_configured_port(server: _Server, tmp_path: Path) -> None:
    assert _check(tmp_path, server.server_address[1]) == 0
    assert server.hosts == ["127.0.0.1"]  # a Host the gateway always allows


def test_a_wildcard_bind_is_checked_on_loopback(server: _Server, tmp_path: Path) -> None:
    assert _check(tmp_path, server.server_address[1], host="0.0.0.0") == 0


def test_unhealthy_on_503(server: _Server, tmp_path: Path) -> None:
    server.status = 503  # the gateway's answer once its background tasks have stopped
    assert _check(tmp_path, server.server_address[1]) == 1


def test_unhealthy_when_nothing_listens(server: _Server, tmp_path: Path) -> None:
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    assert _check(tmp_path, port) == 1
