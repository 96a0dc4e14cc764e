"""An IdP reached only through an HTTP proxy (``http.jwt.jwks_proxy``, or ``$https_proxy``).

Real parts on 127.0.0.1: an HTTPS IdP whose certificate a test CA signed for ``idp.test`` (a
name only the proxy can resolve), and a CONNECT proxy that maps that name to the IdP's port.
The CA is made trusted for this process through ``SSL_CERT_FILE``, which OpenSSL reads when
the fetch builds its TLS context. A fetch that did not go through the proxy cannot resolve
``idp.test``; a proxy that answers for the IdP with another certificate is refused."""

from __future__ import annotations

import datetime
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config.sections import JwtSection
from gateway.errors import AuthFailed, JwksFetchFailed
from gateway.server import jwks
from gateway.server.auth import JwtVerifier
from tests.local_http import serving
from tests.server.http.conftest import AUDIENCE, ISSUER, Idp, make_idp

NAME = "idp.test"


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    folder: Path

    def issue(self, name: str) -> ssl.SSLContext:
        """A server context holding a certificate for ``name`` signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = self.folder / f"{name}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pem)
        return ctx


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "symbi test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))  # the seam: this process trusts the test CA
    return Ca(key, cert, tmp_path)


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    return make_idp(tmp_path)


def https_idp(idp: Idp, ctx: ssl.SSLContext) -> Iterator[int]:
    body = json.dumps(idp.jwks).encode()

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with serving(srv):
        yield srv.server_address[1]


@dataclass
class Proxy:
    """A CONNECT proxy resolving ``idp.test`` to 127.0.0.1; ``answer`` replaces its 200."""

    port: int = 0
    targets: list[str] = field(default_factory=list)
    answer: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n"


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    state = Proxy()

    class H(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.request.recv(1024)
                if not chunk:
                    return
                head += chunk
            target = head.split(b" ")[1].decode()
            state.targets.append(target)
            host, _, port = target.rpartition(":")
            if not state.answer.startswith(b"HTTP/1.1 200") or host != NAME:
                self.request.sendall(state.answer)
                return
            upstream = socket.create_connection(("127.0.0.1", int(port)))
            self.request.sendall(state.answer)
            pipe = threading.Thread(target=_pipe, args=(upstream, self.request), daemon=True)
            pipe.start()
            _pipe(self.request, upstream)
            pipe.join(5)
            upstream.close()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = Server(("127.0.0.1", 0), H)
    state.port = srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield state
    srv.shutdown()
    srv.server_close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def verifier(url: str, via: str | None) -> JwtVerifier:
    return JwtVerifier(
        JwtSection(issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256",), jwks_url=url, jwks_proxy=via)
    )


def test_a_token_verifies_against_a_key_set_only_the_proxy_reaches(ca: Ca, idp: Idp, proxy: Proxy) -> None:
    for port in https_idp(idp, ca.issue(NAME)):
        url = f"https://{NAME}:{port}/jwks.json"
        assert verifier(url, f"http://127.0.0.1:{proxy.port}").verify(idp.token()).id == "dana"
        assert proxy.targets == [f"{NAME}:{port}"]
        with pytest.raises(AuthFailed):  # the same URL without the proxy: the name does not resolve
            verifier(url, "direct").verify(idp.token())
        assert proxy.targets == [f"{NAME}:{port}"]


def test_a_proxy_answering_for_the_idp_with_another_certificate_is_refused(
    ca: Ca, idp: Idp, proxy: Proxy
) -> None:
    """The tunnel reaches a server whose certificate (from the same CA) names another host: TLS
    is checked end to end against the IdP's name, so the proxy cannot serve its own keys."""
    for port in https_idp(idp, ca.issue("other.test")):
        with pytest.raises(JwksFetchFailed):
            jwks.fetch_jwks(f"https://{NAME}:{port}/jwks.json", proxy=("127.0.0.1", proxy.port))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
        b'HTTP/1.1 200 OK\r\n\r\n{"keys": []}',  # bytes of its own after the 200
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 " + b"x" * 20_000,  # never ends its answer
    ],
    ids=["407", "bytes-after-200", "not-http", "endless-answer"],
)
def test_a_proxy_that_does_not_open_the_tunnel_is_a_refusal(proxy: Proxy, answer: bytes) -> None:
    proxy.answer = answer
    with pytest.raises(JwksFetchFailed):
        jwks.fetch_jwks("https://elsewhere.test/jwks.json", proxy=("127.0.0.1", proxy.port))
    assert proxy.targets == ["elsewhere.test:443"]


def test_a_proxy_is_never_used_for_a_plain_http_key_set() -> None:
    with pytest.raises(JwksFetchFailed):
        jwks.fetch_jwks("http://127.0.0.1:9/jwks.json", proxy=("127.0.0.1", 9))
