"""Fixtures for the schemapin tests: real keys, a real HTTPS server, the real reference package."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives.asymmetric import ec

import schemapin
from tests.local_http import serving

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets" / "schemapin"
REF_VENV = ROOT / ".venv-schemapin-ref"
REF_TOOL = ROOT / "scripts" / "schemapin_ref_tool.py"


def load_tool(name: str) -> tuple[str, Any]:
    """(wire text, parsed object) of a tool definition in tests/assets/schemapin/tools."""
    text = (ASSETS / "tools" / f"{name}.json").read_text(encoding="utf-8")
    return text, schemapin.parse_json(text)


TOOL_NAMES = ("create_issue", "translate_text", "search_files", "numbers")


@pytest.fixture
def key() -> ec.EllipticCurvePrivateKey:
    return schemapin.generate_private_key()


@pytest.fixture
def other_key() -> ec.EllipticCurvePrivateKey:
    return schemapin.generate_private_key()


# --- the reference implementation, in its own venv -------------------------------------------


class Reference:
    """Runs scripts/schemapin_ref_tool.py in the reference venv (schemapin==1.3.0)."""

    def __init__(self, python: Path) -> None:
        self.python = python

    def run(self, ops: list[dict[str, Any]]) -> list[Any]:
        out = subprocess.run(
            [str(self.python), "-I", str(REF_TOOL)],
            input=json.dumps(ops),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        results = json.loads(out.stdout)
        for op, res in zip(ops, results, strict=True):
            assert res["ok"], f"reference failed on {op['op']}: {res.get('error')}"
        return [r["result"] for r in results]

    def one(self, op: dict[str, Any]) -> Any:
        return self.run([op])[0]


def _pypi_reachable() -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", d, "schemapin==1.3.0"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    return p.returncode == 0, (p.stderr or p.stdout)[-500:]


@pytest.fixture(scope="session")
def ref() -> Reference:
    """The reference venv, created by scripts/schemapin-reference.sh if it is missing."""
    p = subprocess.run(
        [str(ROOT / "scripts" / "schemapin-reference.sh"), str(REF_VENV)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if p.returncode != 0:
        reachable, why = _pypi_reachable()
        if not reachable:
            pytest.skip(f"reference schemapin==1.3.0 cannot be installed: PyPI unreachable ({why.strip()})")
        pytest.fail(f"scripts/schemapin-reference.sh failed although PyPI is reachable:\n{p.stderr[-2000:]}")
    return Reference(REF_VENV / "bin" / "python")


# --- a real HTTPS server on 127.0.0.1 ----------------------------------------------------------
# This loopback server stands in for a remote domain's web server: the one allowed fake
# (nothing may contact a real remote host). TLS is real, with a test CA from trustme.


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes


@dataclass
class HttpsServer:
    domain: str
    ca: trustme.CA
    ca_path: Path
    routes: dict[str, Route]
    hits: list[str]

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def serve_json(self, path: str, doc: Any) -> None:
        self.routes[path] = Route(body=json.dumps(doc).encode())

    def url(self, path: str) -> str:
        return f"https://{self.domain}{path}"


def _handler(routes: dict[str, Route], hits: list[str]) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            r = routes.get(self.path)
            if r is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if r.status == 0:  # simulate an unreachable/broken server: drop the connection
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(r.status)
            for k, v in r.headers.items():
                self.send_header(k, v)
            if r.send_length:
                self.send_header("Content-Length", str(len(r.body)))
            self.end_headers()
            self.wfile.write(r.body)

        def log_message(self, *args: Any) -> None:
            pass

    return H


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[HttpsServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    routes: dict[str, Route] = {}
    hits: list[str] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes, hits))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    ca_path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    with serving(httpd):
        yield HttpsServer(f"127.0.0.1:{httpd.server_address[1]}", ca, ca_path, routes, hits)


MakeSnapshot = Callable[..., schemapin.KeySnapshot]
