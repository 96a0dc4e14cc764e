"""The docker tier's probe asks Docker's events once: a socket proxy that forbids ``/events``
would leave every run's post-mortem saying "cannot tell", so the tier is refused up front."""

from __future__ import annotations

import http.client
import http.server
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.sandbox import SandboxManager, docker_api
from gateway.sandbox.docker_tier import DockerTier

from .conftest import require_tier

DOCKER_SOCK = "/var/run/docker.sock"


class _UnixHTTP(http.client.HTTPConnection):
    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(DOCKER_SOCK)


def _proxy(forbid_events: bool) -> type[http.server.BaseHTTPRequestHandler]:
    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            if forbid_events and self.path.split("?")[0].endswith("/events"):
                body = b'{"message": "forbidden by the proxy"}'
                self.send_response(403)
            else:
                n = int(self.headers.get("Content-Length") or 0)
                upstream = _UnixHTTP("localhost")
                upstream.request(
                    self.command, self.path, self.rfile.read(n) if n else None, dict(self.headers)
                )
                got = upstream.getresponse()
                body = got.read()
                upstream.close()
                self.send_response(got.status)
                for k, v in got.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_HEAD = do_POST = _forward

        def address_string(self) -> str:  # (a unix peer has no host)
            return "unix"

        def log_message(self, *args: Any) -> None:  # (quiet)
            pass

    return Proxy


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture(params=[True, False], ids=["events-forbidden", "events-forwarded"])
def proxied(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manager: SandboxManager
) -> Iterator[bool]:
    """A real HTTP proxy on a unix socket in front of the real daemon (the seam: a socket proxy
    cannot be had here otherwise), made the gateway's daemon; yields whether it forbids /events.
    The shared manager's tier is asked before (its cached answer, the real daemon's: asked
    through the proxy, a refusal would be cached for the tests after this one). The shared
    client is process-wide: no warm pool or reclaim thread may run in this worker meanwhile."""
    require_tier(manager, "docker")
    path = tmp_path / "proxy.sock"
    server = _UnixServer(str(path), _proxy(request.param))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    monkeypatch.setattr(docker_api, "_client", None)  # the shared client made afresh, through it
    try:
        yield request.param
    finally:
        if docker_api._client is not None:
            docker_api._client.close()
        server.shutdown()
        server.server_close()


def test_a_proxy_forbidding_docker_events_refuses_the_tier(manager: SandboxManager, proxied: bool) -> None:
    image = manager.tiers["docker"].image  # type: ignore[attr-defined]
    ok, _reason = DockerTier(image).available(refresh=True)
    assert ok is not proxied  # forbidden: refused at the probe; forwarded: the proxy itself works
