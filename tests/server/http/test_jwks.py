"""Hostile JWKS endpoints and keys that are not for signing (gateway/server/jwks.py).

A real HTTP server on 127.0.0.1 plays the IdP (or whoever answers in its place): one that
serves a key set too big to be one, one that drips it a few bytes at a time (each read well
within a socket timeout), one that is down while made-up tokens flood in. And key sets whose
keys are published for encryption, or for another algorithm than the token's."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.config.sections import JwtSection
from gateway.errors import AuthFailed, JwksFetchFailed
from gateway.server import jwks
from gateway.server.auth import JwtVerifier
from tests.local_http import serving
from tests.server.http.conftest import AUDIENCE, ISSUER, Idp, make_idp

Handler = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def idp(tmp_path: Path) -> Idp:
    return make_idp(tmp_path)


@pytest.fixture
def endpoint() -> Iterator[Callable[[Handler], tuple[str, list[str]]]]:
    """Serves what the handler given writes; the URL and the list of requests seen."""
    servers: list[ThreadingHTTPServer] = []
    stack: list[Any] = []

    def start(handle: Handler) -> tuple[str, list[str]]:
        hits: list[str] = []

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                try:
                    handle(self)
                except OSError:  # the gateway hung up on us: what it should do
                    pass

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        srv.daemon_threads = True
        cm = serving(srv)
        cm.__enter__()
        stack.append(cm)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/jwks.json", hits

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


def verifier(
    url: str | None = None, path: Path | None = None, algs: tuple[str, ...] = ("RS256",)
) -> JwtVerifier:
    return JwtVerifier(
        JwtSection(issuer=ISSUER, audience=AUDIENCE, algorithms=algs, jwks_url=url, jwks_file=path)
    )


def padded(idp: Idp, size: int) -> bytes:
    """The IdP's own key set, valid JSON, made ``size`` bytes long with a field nobody reads."""
    doc = {**idp.jwks, "padding": ""}
    doc["padding"] = "x" * (size - len(json.dumps(doc)))
    return json.dumps(doc).encode()


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "read-to-close"])
def test_a_key_set_too_big_to_be_one_is_refused_with_its_reason(
    idp: Idp,
    endpoint: Callable[[Handler], tuple[str, list[str]]],
    caplog: pytest.LogCaptureFixture,
    declared: bool,
) -> None:
    """Attack: the endpoint answers a valid key set padded to 4 MB (or never-ending). It was
    read whole into memory, on every fetch; now the fetch stops at ``JWKS_MAX_BYTES``."""
    body = padded(idp, 4 * 1024 * 1024)

    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declared:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    url, _ = endpoint(handle)
    v = verifier(url)
    with caplog.at_level(logging.ERROR, logger="symbi.http.jwks"), pytest.raises(JwksFetchFailed):
        v.verify(idp.token("erin"))
    assert any(r.name == "symbi.http.jwks" and r.levelno == logging.ERROR for r in caplog.records)
    # the same set within the bound verifies: the limit, not the set, refused it
    small = padded(idp, jwks.JWKS_MAX_BYTES // 2)
    body = small
    v._url._refused_until = 0.0  # type: ignore[union-attr]  # past the retry interval
    assert v.verify(idp.token("erin")).id == "erin"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_key_set_dripped_slowly_is_cut_at_the_fetch_bound(
    idp: Idp, endpoint: Callable[[Handler], tuple[str, list[str]]], where: str
) -> None:
    """Attack: the endpoint sends its answer a few bytes every 0.3 s, each read far inside a
    socket timeout: a fetch took as long as the endpoint liked (about 12 s here, and as long
    as it pleases elsewhere). Now the whole fetch ends at ``JWKS_FETCH_S``: it fails while the
    endpoint is still dripping (a minute of it: sleeps are lower bounds, so however loaded the
    machine, only a bound well past ``JWKS_FETCH_S`` could wait the endpoint out)."""
    body = json.dumps(idp.jwks).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    extra = "".join(f"X-Pad-{i}: {'y' * 20}\r\n" for i in range(40)) if where == "headers" else ""
    head_bytes = (head + extra + "\r\n").encode()
    slow = head_bytes if where == "headers" else body
    step = max(1, len(slow) // 200)  # 200 writes 0.3 s apart: a minute at least
    sent_all, stop = threading.Event(), threading.Event()

    def handle(h: BaseHTTPRequestHandler) -> None:
        if where == "body":
            h.wfile.write(head_bytes)
            h.wfile.flush()
        for i in range(0, len(slow), step):
            if stop.wait(0.3):  # the test is over
                return
            h.wfile.write(slow[i : i + step])
            h.wfile.flush()
        if where == "headers":
            h.wfile.write(body)
        sent_all.set()
        h.close_connection = True

    url, _ = endpoint(handle)
    v = verifier(url)
    try:
        with pytest.raises(JwksFetchFailed):
            v.verify(idp.token("erin"))
        assert not sent_all.is_set()  # the bound, not the endpoint, decided
    finally:
        stop.set()


def test_made_up_tokens_while_the_idp_fails_make_one_fetch_per_interval(
    idp: Idp, endpoint: Callable[[Handler], tuple[str, list[str]]]
) -> None:
    """Attack: the IdP fails (503) and a caller without credentials sends tokens with made-up
    ``kid``s. Each one was another fetch of the key set (and, with the IdP hanging, another
    5 s wait): nothing was remembered after a failed fetch. Now one fetch per
    ``JWKS_RETRY_S``, the others refused at once."""

    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(503)
        h.send_header("Content-Length", "0")
        h.end_headers()

    url, hits = endpoint(handle)
    v = verifier(url)
    for i in range(20):
        with pytest.raises(AuthFailed):
            v.verify(idp.token("mallory", kid=f"made-up-{i}"))
    assert len(hits) == 1
    # the interval is over (the clock moved past it, the seam): one more try
    v._url.clock = lambda: time.monotonic() + jwks.JWKS_RETRY_S + 1  # type: ignore[union-attr]
    for i in range(5):
        with pytest.raises(JwksFetchFailed):
            v.verify(idp.token("mallory", kid=f"again-{i}"))
    assert len(hits) == 2


@pytest.mark.slow
def test_a_never_answering_idp_holds_only_the_first_token(tmp_path: Path, idp: Idp) -> None:
    """With the endpoint accepting and never answering, the first token waits out the fetch
    bound; the next ones are refused at once (each waited its 5 s before)."""
    with socket.socket() as down:
        down.bind(("127.0.0.1", 0))
        down.listen(16)
        v = verifier(f"http://127.0.0.1:{down.getsockname()[1]}/jwks.json")
        assert v._url is not None
        now = [1000.0]  # the verifier's clock, the seam: a stalled machine cannot end the interval
        v._url.clock = lambda: now[0]
        with pytest.raises(AuthFailed):
            v.verify(idp.token("mallory", kid="made-up"))
        for i in range(5):
            with pytest.raises(AuthFailed):
                v.verify(idp.token("mallory", kid=f"made-up-{i}"))
        # refused without a fetch, so without its wait: one connection was ever made
        down.setblocking(False)
        made = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                down.accept()[0].close()
                made += 1
        assert made == 1 and v._url.fetches == 1


def test_a_fresh_set_survives_a_failed_refetch(
    idp: Idp, endpoint: Callable[[Handler], tuple[str, list[str]]]
) -> None:
    """Fail closed does not mean fail everyone: a refetch for an unknown kid that fails keeps
    the fresh set (a known token still verifies) and is not retried before the interval."""
    state = {"up": True}
    body = json.dumps(idp.jwks).encode()

    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200 if state["up"] else 503)
        h.send_header("Content-Length", str(len(body) if state["up"] else 0))
        h.end_headers()
        if state["up"]:
            h.wfile.write(body)

    url, hits = endpoint(handle)
    v = verifier(url)
    now = [1000.0]
    v._url.clock = lambda: now[0]  # type: ignore[union-attr]
    assert v.verify(idp.token("erin")).id == "erin"
    state["up"] = False
    now[0] += jwks.JWKS_REFETCH_S + 1
    with pytest.raises(AuthFailed):
        v.verify(idp.token("mallory", kid="made-up"))
    assert v.verify(idp.token("erin")).id == "erin"
    with pytest.raises(AuthFailed):
        v.verify(idp.token("mallory", kid="made-up-2"))
    assert len(hits) == 2


# -- which key may verify -------------------------------------------------------------------


def _pss_token(idp: Idp) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "mallory",
        "iat": now,
        "exp": now + 300,
        "roles": ["admin"],
    }
    return jwt.encode(claims, idp.rsa_key, algorithm="PS256", headers={"kid": "rsa1"})


def _with_rsa(idp: Idp, **fields: str) -> dict[str, Any]:
    return {"keys": [({**k, **fields} if k["kid"] == "rsa1" else k) for k in idp.jwks["keys"]]}


@pytest.mark.parametrize("source", ["file", "url"])
def test_a_key_published_for_encryption_verifies_nothing(
    idp: Idp, tmp_path: Path, endpoint: Callable[[Handler], tuple[str, list[str]]], source: str
) -> None:
    """Attack: the RSA key is published ``use: enc`` (or ``key_ops: [encrypt]``): a key for
    encrypting to the IdP. From a ``jwks_file`` it verified signatures all the same."""
    for fields in ({"use": "enc"}, {"key_ops": ["encrypt"]}):
        doc = _with_rsa(idp, **fields)
        v = _source(doc, tmp_path, endpoint, source)
        with pytest.raises(AuthFailed):
            v.verify(idp.token("mallory"))
        assert v.verify(idp.token("erin", alg="ES256")).id == "erin"  # the signing key still does


@pytest.mark.parametrize("source", ["file", "url"])
def test_a_key_published_for_one_algorithm_verifies_no_other(
    idp: Idp, tmp_path: Path, endpoint: Callable[[Handler], tuple[str, list[str]]], source: str
) -> None:
    """Attack: the RSA key says ``alg: RS256``; the config allows RS256 and PS256; a PS256
    token signed with that key verified (PyJWT checks the key's family, not its ``alg``)."""
    v = _source(_with_rsa(idp, alg="RS256"), tmp_path, endpoint, source, algs=("RS256", "PS256"))
    with pytest.raises(AuthFailed):
        v.verify(_pss_token(idp))
    assert v.verify(idp.token("erin")).id == "erin"  # RS256, as published
    # a key without an alg is still good for any allowed algorithm of its type
    bare = {"keys": [{k: v for k, v in d.items() if k != "alg"} for d in idp.jwks["keys"]]}
    v = _source(bare, tmp_path, endpoint, source, algs=("RS256", "PS256"))
    assert v.verify(_pss_token(idp)).id == "mallory"


def _source(
    doc: dict[str, Any],
    tmp_path: Path,
    endpoint: Callable[[Handler], tuple[str, list[str]]],
    source: str,
    algs: tuple[str, ...] = ("RS256", "ES256"),
) -> JwtVerifier:
    body = json.dumps(doc).encode()
    if source == "file":
        path = tmp_path / f"jwks-{time.monotonic_ns()}.json"
        path.write_bytes(body)
        return verifier(path=path, algs=algs)

    def handle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    url, _ = endpoint(handle)
    return verifier(url, algs=algs)
