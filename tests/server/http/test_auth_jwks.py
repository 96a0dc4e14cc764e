"""The JWKS URL client: a key the IdP removed stops verifying once the cached key set expires
(300 s), and a JWKS endpoint that accepts but never answers fails closed, not hangs."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gateway.config.sections import JwtSection
from gateway.errors import AuthFailed
from gateway.server.auth import JwtVerifier
from tests.conftest import write_config
from tests.local_http import serving
from tests.server.http.conftest import (
    AUDIENCE,
    ISSUER,
    Idp,
    bearer,
    jwt_http_section,
    make_idp,
    make_keys,
    run_server,
)


@pytest.fixture
def idp_server(tmp_path: Path) -> Iterator[tuple[str, Idp, dict[str, bytes], list[str]]]:
    idp = make_idp(tmp_path)
    served = {"body": json.dumps(idp.jwks).encode()}
    hits: list[str] = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = served["body"]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), H)) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}/jwks.json", idp, served, hits


def test_a_key_removed_from_the_jwks_stops_verifying_when_the_cached_set_expires(
    idp_server: tuple[str, Idp, dict[str, bytes], list[str]],
) -> None:
    url, idp, served, hits = idp_server
    v = JwtVerifier(JwtSection(issuer=ISSUER, audience=AUDIENCE, algorithms=("RS256", "ES256"), jwks_url=url))
    assert v.verify(idp.token("erin")).id == "erin"  # RS256, kid rsa1
    assert v.verify(idp.token("erin")).id == "erin" and len(hits) == 1  # the cached key set
    # the IdP drops the RSA key (compromised, rotated out): only the EC key is published now
    served["body"] = json.dumps({"keys": [k for k in idp.jwks["keys"] if k["kid"] == "ec1"]}).encode()
    # 300 s cannot pass in a test: the key-set cache's clock is moved past its lifespan (the seam)
    assert v._url is not None
    v._url.clock = lambda: time.monotonic() + 300.5
    with pytest.raises(AuthFailed):
        v.verify(idp.token("erin"))
    assert v.verify(idp.token("erin", alg="ES256")).id == "erin"
    assert len(hits) >= 2


@pytest.mark.slow
def test_a_jwks_endpoint_that_never_answers_fails_closed(tmp_path: Path) -> None:
    """The fetch is bounded (5 s): the request is refused, not left waiting on the endpoint."""
    idp = make_idp(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # accepts (the kernel completes the handshake) and never answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
        v = JwtVerifier(JwtSection(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
        outcome: list[BaseException | None] = []

        def call() -> None:
            try:
                v.verify(idp.token())
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion below
                outcome.append(e)

        t = threading.Thread(target=call, daemon=True)
        t.start()
        t.join(20)  # generous: not a timing assertion, a bound that tells "fails" from "hangs"
        assert len(outcome) == 1 and isinstance(outcome[0], AuthFailed)


@pytest.mark.slow
def test_made_up_tokens_while_the_idp_is_down_stall_no_one_elses_work(tmp_path: Path) -> None:
    """Attack: with the JWKS endpoint unreachable, a caller without credentials sends tokens
    with a made-up ``kid``. Each one's verification waited up to 5 s on a fetch in one of the
    shared worker threads (``runtime.scheduler_threads``): with them all held, an admin's
    ``/api/audit/recent`` (a thread too, as code tools, memory and key lookups are) waited for
    every such token to be refused. Now it is answered while they still wait."""
    with socket.socket() as down:
        down.bind(("127.0.0.1", 0))
        down.listen(16)  # accepts and never answers: an IdP that is down
        url = f"http://127.0.0.1:{down.getsockname()[1]}/jwks.json"
        cfg = write_config(
            tmp_path, f"[runtime]\nscheduler_threads = 1\n[http]\n{jwt_http_section(jwks_url=url)}"
        )
        keys = make_keys(cfg)
        made_up = make_idp(tmp_path).token("mallory", kid="made-up")
        refused: list[int] = []

        def flood() -> None:
            r = httpx.post(f"{run.mcp}", json={}, headers=bearer(made_up), timeout=60)
            refused.append(r.status_code)

        with run_server(cfg) as run:
            threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
            for t in threads:
                t.start()
            time.sleep(1)  # both are in verification by now (the fetch takes 5 s to fail)
            r = httpx.get(run.base + "/api/audit/recent", headers=bearer(keys.admin), timeout=60)
            answered_before = list(refused)
            for t in threads:
                t.join(60)
        assert r.status_code == 200
        assert answered_before == []  # the admin was not queued behind the made-up tokens
        assert refused == [401, 401]  # and they were refused (fail closed)
