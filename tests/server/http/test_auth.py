"""Authentication: API keys and JWTs, attacked from every side, on a real server."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.apikeys import hash_key
from gateway.config.sections import JwtSection
from gateway.errors import AuthFailed, NoCredentials
from gateway.server.auth import ApiKeyStore, Authenticator, JwtVerifier
from tests.local_http import serving
from tests.server.http.conftest import (
    AUDIENCE,
    ISSUER,
    Env,
    bearer,
    everything_config,
    jwt_http_section,
    make_idp,
    make_keys,
    run_server,
)

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def post_init(env: Env, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(env.run.mcp, json=INIT, headers={**MCP_HEADERS, **headers}, timeout=10)


# -- the key store --------------------------------------------------------------------------------


def test_key_store_keeps_only_a_hash_with_mode_0600(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    key, rec = store.create("alice", ("admin",))
    text = (tmp_path / "keys.json").read_text()
    secret = key.removeprefix("symbi_").partition("_")[2]  # the part after the key id (may hold "_")
    assert key not in text and secret not in text
    assert rec.sha256 == hash_key(key) and rec.sha256 in text
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    assert store.lookup(key) == rec


def test_key_store_refuses_tampered_unknown_and_revoked_keys(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "keys.json")
    key, rec = store.create("alice", ("admin",))
    last = key[-1]
    assert store.lookup(key[:-1] + ("A" if last != "A" else "B")) is None  # same id, wrong secret
    assert store.lookup("symbi_000000000000_" + key.split("_")[-1]) is None  # wrong id
    assert store.lookup("not-a-key") is None
    assert store.revoke(rec.id) is True
    assert store.lookup(key) is None
    assert store.revoke(rec.id) is False


# -- JWT verification (unit level, real keys) ----------------------------------------------------


@pytest.fixture
def verifier(tmp_path: Path):  # type: ignore[no-untyped-def]
    idp = make_idp(tmp_path)
    v = JwtVerifier(JwtSection(issuer=ISSUER, audience=AUDIENCE, jwks_file=idp.jwks_path))
    return idp, v


def test_key_store_never_writes_through_a_link_planted_at_a_temporary_name(tmp_path: Path) -> None:
    """Attack: a symlink planted at ``keys.json.tmp<pid>`` (the name the key file was written
    under) took every key's hash, principal and roles into a file of the planter's choosing."""
    path = tmp_path / "data" / "keys.json"
    path.parent.mkdir()
    catch = tmp_path / "caught.json"
    catch.write_text("")
    os.symlink(catch, path.with_name(f"{path.name}.tmp{os.getpid()}"))
    store = ApiKeyStore(path)
    key, _ = store.create("alice", ("admin",))
    assert catch.read_text() == "" and not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.lookup(key) is not None


def test_jwt_good_tokens_give_principal_with_roles(verifier) -> None:  # type: ignore[no-untyped-def]
    idp, v = verifier
    p = v.verify(idp.token("dana", roles=["admin", "dev"]))
    assert (p.id, p.roles, p.claims["iss"]) == ("dana", ("admin", "dev"), ISSUER)
    assert v.verify(idp.token("erin", alg="ES256", roles="a b")).roles == ("a", "b")


# subjects refused as a missing one is: each would become a principal id ("" shared by all)
BAD_SUBJECTS = {
    "empty_sub": "",
    "blank_sub": " \t ",
    "newline_in_sub": "alice\nadmin",
    "nul_sub": "\x00",
    "del_in_sub": "bob\x7f",
    "c1_in_sub": "carol\x85",
    "line_separator_in_sub": "dave\u2028",
}


@pytest.mark.parametrize(
    "case",
    [
        "expired",
        "wrong_aud",
        "wrong_iss",
        "no_exp",
        "no_sub",
        "empty_sub",
        "blank_sub",
        "newline_in_sub",
        "nul_sub",
        "del_in_sub",
        "c1_in_sub",
        "line_separator_in_sub",
        "bad_sig",
        "alg_none",
        "hs256_confusion",
        "unknown_kid",
        "roles_not_list",
        "nan_claim",
        "infinity_in_a_nested_claim",
        "claims_nested_too_deep",
        "garbage",
        "alg_not_pinned",
    ],
)
def test_jwt_refused(verifier, case: str) -> None:  # type: ignore[no-untyped-def]
    idp, v = verifier
    if case == "expired":
        tok = idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    elif case == "wrong_aud":
        tok = idp.token(aud="someone-else")
    elif case == "wrong_iss":
        tok = idp.token(iss="https://evil.invalid")
    elif case == "no_exp":
        tok = idp.token(exp=None)
    elif case == "no_sub":
        tok = idp.token(sub=None)
    elif case in BAD_SUBJECTS:
        tok = idp.token(sub=BAD_SUBJECTS[case])
    elif case == "bad_sig":
        from cryptography.hazmat.primitives.asymmetric import rsa

        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tok = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
            other,
            algorithm="RS256",
            headers={"kid": "rsa1"},
        )
    elif case == "alg_none":
        h = base64.urlsafe_b64encode(
            json.dumps({"alg": "none", "typ": "JWT", "kid": "rsa1"}).encode()
        ).rstrip(b"=")
        c = base64.urlsafe_b64encode(
            json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}).encode()
        ).rstrip(b"=")
        tok = (h + b"." + c + b".").decode()
    elif case == "hs256_confusion":
        # Sign with HMAC using the public RSA key as the secret: the classic algorithm confusion.
        from cryptography.hazmat.primitives import serialization

        pub = idp.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        import hashlib
        import hmac as _hmac

        h = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa1"}).encode()).rstrip(b"=")
        c = base64.urlsafe_b64encode(
            json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}).encode()
        ).rstrip(b"=")
        sig = base64.urlsafe_b64encode(_hmac.new(pub, h + b"." + c, hashlib.sha256).digest()).rstrip(b"=")
        tok = (h + b"." + c + b"." + sig).decode()
    elif case == "unknown_kid":
        tok = idp.token(kid="nope")
    elif case == "roles_not_list":
        tok = idp.token(roles={"admin": True})
    elif case == "nan_claim":  # PyJWT's json.loads takes NaN; regorus holds NaN <= x true
        tok = idp.token(clearance=float("nan"))
    elif case == "infinity_in_a_nested_claim":
        tok = idp.token(limits={"spend": [1, float("inf")]})
    elif case == "claims_nested_too_deep":  # the policy input's walks are bounded at 100
        deep: Any = 1
        for _ in range(150):
            deep = [deep]
        tok = idp.token(nest=deep)
    elif case == "alg_not_pinned":
        tok = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60},
            idp.rsa_key,
            algorithm="PS256",
            headers={"kid": "rsa1"},
        )
    else:
        tok = "a.b.c"
    with pytest.raises(AuthFailed):
        v.verify(tok)


def test_authenticator_fails_closed_without_jwt_config_and_without_credentials(tmp_path: Path) -> None:
    auth = Authenticator(keys=ApiKeyStore(tmp_path / "k.json"))
    with pytest.raises(NoCredentials):
        auth.authenticate({})
    with pytest.raises(AuthFailed):
        auth.authenticate({"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"})
    with pytest.raises(AuthFailed):
        auth.authenticate({"authorization": "Basic YTpi"})
    anon = Authenticator(keys=ApiKeyStore(tmp_path / "k.json"), anonymous="guest")
    assert anon.authenticate({}).kind == "anonymous"
    with pytest.raises(AuthFailed):  # a bad credential is never downgraded to anonymous
        anon.authenticate({"x-api-key": "symbi_bad"})


# -- on the wire --------------------------------------------------------------------------------


def test_no_credentials_is_401_with_resource_metadata_challenge(env: Env) -> None:
    r = post_init(env, {})
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "invalid_token" not in challenge
    url = challenge.split('resource_metadata="')[1].split('"')[0]
    assert url == env.run.base + "/.well-known/oauth-protected-resource"
    doc = httpx.get(url).json()
    assert doc["resource"] == env.run.mcp
    assert doc["authorization_servers"] == ["https://idp.test.invalid"]
    assert httpx.get(env.run.base + "/.well-known/oauth-protected-resource/mcp").json() == doc


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer symbi_000000000000_nope"},
        {"X-API-Key": "symbi_000000000000_nope"},
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
    ],
)
def test_bad_credentials_are_401_invalid_token(env: Env, headers: dict[str, str]) -> None:
    r = post_init(env, headers)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["error"] == "invalid_token"


@pytest.mark.parametrize("case", ["expired", "wrong_aud", "wrong_iss", "bad_sig", "empty_sub", "blank_sub"])
def test_bad_jwts_are_401_on_the_wire(env: Env, case: str) -> None:
    idp = env.idp
    if case in BAD_SUBJECTS:
        tok = idp.token(sub=BAD_SUBJECTS[case])
    elif case == "expired":
        tok = idp.token(exp=int(time.time()) - 3600)
    elif case == "wrong_aud":
        tok = idp.token(aud="other")
    elif case == "wrong_iss":
        tok = idp.token(iss="https://evil.invalid")
    else:
        tok = idp.token()[:-4] + "AAAA"
    assert post_init(env, bearer(tok)).status_code == 401


def test_valid_key_and_jwt_are_accepted(env: Env) -> None:
    assert post_init(env, bearer(env.keys.user)).status_code == 200
    assert post_init(env, {"X-API-Key": env.keys.user}).status_code == 200
    assert post_init(env, bearer(env.idp.token())).status_code == 200
    assert post_init(env, bearer(env.idp.token(alg="ES256"))).status_code == 200


def test_admin_api_needs_admin_role(env: Env) -> None:
    assert httpx.get(env.run.base + "/api/tools").status_code == 401
    assert httpx.get(env.run.base + "/api/tools", headers=bearer(env.keys.user)).status_code == 403
    assert (
        httpx.get(env.run.base + "/api/tools", headers=bearer(env.idp.token(roles=["developer"]))).status_code
        == 403
    )
    assert httpx.get(env.run.base + "/api/tools", headers=bearer(env.keys.admin)).status_code == 200
    assert (
        httpx.get(env.run.base + "/api/tools", headers=bearer(env.idp.token(roles=["admin"]))).status_code
        == 200
    )


def test_revoked_key_stops_working_on_a_running_server(env: Env) -> None:
    key, rec = env.keys.store.create("temp", ("developer",))
    assert post_init(env, bearer(key)).status_code == 200
    assert env.keys.store.revoke(rec.id)
    assert post_init(env, bearer(key)).status_code == 401


def test_session_cannot_be_used_by_another_principal(env: Env) -> None:
    r = post_init(env, bearer(env.keys.user))
    sid = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    h = {**MCP_HEADERS, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    # same session id, other credential (another key; a JWT) -> as if the session did not exist
    assert httpx.post(env.run.mcp, json=ping, headers={**h, **bearer(env.keys.other_user)}).status_code == 404
    assert (
        httpx.post(env.run.mcp, json=ping, headers={**h, **bearer(env.idp.token("bob"))}).status_code == 404
    )
    assert httpx.post(env.run.mcp, json=ping, headers={**h, **bearer(env.keys.user)}).status_code == 200


@pytest.mark.anyio
async def test_principal_reaches_the_gateway(env: Env) -> None:
    """The principal the chain sees is the one the key / token names."""
    for token, who in ((env.keys.user, "bob"), (env.idp.token("dana"), "dana")):
        async with (
            httpx2.AsyncClient(headers=bearer(token)) as hc,
            streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            res = await s.call_tool("everything__echo", {"message": f"from-{who}"})
            assert not res.is_error
        latest = env.run.state.recent.latest(1)[0]
        assert (latest.principal, latest.target) == (who, "everything__echo")


async def _visible_tools(env: Env, token: str) -> set[str]:
    async with (
        httpx2.AsyncClient(headers=bearer(token)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        return {t.name for t in (await s.list_tools()).tools}


@pytest.mark.anyio
async def test_a_jwt_subject_does_not_pick_up_an_api_key_principals_grants(env: Env) -> None:
    """Attack: a valid JWT with sub=root and no roles took the data's entry for the API key "root"."""
    key, _rec = env.keys.store.create("root", ())  # no roles on the key: admin comes from the data
    as_key = await _visible_tools(env, key)
    assert "everything__get-tiny-image" in as_key  # admin: every tool
    as_jwt = await _visible_tools(env, env.idp.token("root", roles=[]))
    assert as_jwt == set()


# -- JWKS over a URL (served by the test on loopback) ----------------------------------------------


@pytest.fixture
def jwks_server(tmp_path: Path) -> Iterator[tuple[str, object]]:
    idp = make_idp(tmp_path)
    body = json.dumps(idp.jwks).encode()
    hits = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), H)) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}/jwks.json", (idp, hits)


def test_jwks_url(tmp_path: Path, jwks_server) -> None:  # type: ignore[no-untyped-def]
    url, (idp, hits) = jwks_server
    v = JwtVerifier(JwtSection(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
    assert v.verify(idp.token("frank")).id == "frank"
    assert hits, "the JWKS was fetched from the URL"
    with pytest.raises(AuthFailed):
        v.verify(idp.token(aud="x"))


def test_jwks_url_unreachable_fails_closed(tmp_path: Path) -> None:
    idp = make_idp(tmp_path)
    from tests.conftest import free_port

    v = JwtVerifier(
        JwtSection(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"http://127.0.0.1:{free_port()}/j")
    )
    with pytest.raises(AuthFailed):
        v.verify(idp.token())


# -- anonymous access only when configured ------------------------------------------------------


def test_anonymous_only_when_named(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, http_extra='anonymous_principal = "guest"')
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        r = httpx.post(run.mcp, json=INIT, headers=MCP_HEADERS)
        assert r.status_code == 200
        # the anonymous principal is not an admin, and a bad key is still refused
        assert httpx.get(run.base + "/api/tools").status_code == 403
        assert (
            httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, "X-API-Key": "symbi_x"}).status_code == 401
        )
        assert httpx.get(run.base + "/api/tools", headers=bearer(keys.admin)).status_code == 200
    _ = jwt_http_section


def test_jwks_url_on_the_wire(tmp_path: Path, jwks_server) -> None:  # type: ignore[no-untyped-def]
    """A gateway configured with a JWKS URL (served on loopback) accepts its tokens, refuses others."""
    url, (idp, hits) = jwks_server
    cfg = everything_config(tmp_path, http_extra=jwt_http_section(jwks_url=url))
    make_keys(cfg)
    with run_server(cfg) as run:
        init = {**MCP_HEADERS}
        assert (
            httpx.post(run.mcp, json=INIT, headers={**init, **bearer(idp.token("gina"))}).status_code == 200
        )
        assert hits
        assert (
            httpx.post(run.mcp, json=INIT, headers={**init, **bearer(idp.token(aud="x"))}).status_code == 401
        )
        (tmp_path / "other").mkdir()
        other = make_idp(tmp_path / "other")  # same kid "rsa1", a different key: bad signature
        assert (
            httpx.post(run.mcp, json=INIT, headers={**init, **bearer(other.token("mallory"))}).status_code
            == 401
        )


# -- attacks found by mutation testing (scripts/mutate.py) ----------------------------------------


def test_jwt_without_roles_is_a_user_with_no_roles(verifier) -> None:  # type: ignore[no-untyped-def]
    idp, v = verifier
    p = v.verify(idp.token("fay", roles=None))  # None: the claim is left out
    assert (p.id, p.kind, p.roles) == ("fay", "user", ())


def test_jwt_clock_skew_leeway(verifier) -> None:  # type: ignore[no-untyped-def]
    """30 s of clock skew is tolerated, not more (fixed claim times, no timing assertion)."""
    idp, v = verifier
    now = int(time.time())
    assert v.verify(idp.token(exp=now - 10, iat=now - 600)).id == "dana"
    with pytest.raises(AuthFailed):
        v.verify(idp.token(exp=now - 120, iat=now - 600))


def test_an_api_key_gives_its_principal_in_process(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "k.json")
    key, rec = store.create("ci-bot", ("developer",), kind="service")
    auth = Authenticator(keys=store, anonymous="guest")
    for headers in (
        {"x-api-key": key},
        {"authorization": f"Bearer {key}"},
        {"authorization": f"bearer  {key} "},
    ):
        p = auth.authenticate(headers)
        assert (p.id, p.kind, p.roles, p.claims) == ("ci-bot", "service", ("developer",), {"key_id": rec.id})
    assert auth.authenticate({}).id == "guest"
    for bad in ("Basic " + key, f"Token {key}", "Bearer", f"{key} Bearer"):
        with pytest.raises(AuthFailed):
            auth.authenticate({"authorization": bad})


# -- the key file and the authenticator as `serve` builds them (in-process, for scripts/mutate.py) --


def test_key_file_layout_defaults_and_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "keys.json"  # the data dir may not exist yet
    store = ApiKeyStore(path)
    key, rec = store.create("ci", ("developer",))
    assert rec.kind == "user" and store.lookup(key) == rec
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    (stored,) = doc["keys"]
    assert stored == {
        "id": rec.id,
        "principal": "ci",
        "roles": ["developer"],
        "kind": "user",
        "sha256": rec.sha256,
        "created": rec.created,
        "revoked": None,
    }
    # a record written by an older version (no roles/kind/created) loads with the safe defaults
    minimal = {"id": rec.id, "principal": "ci", "sha256": rec.sha256}
    path.write_text(json.dumps({"version": 1, "keys": [minimal], "padding": "x" * 10}))
    old = ApiKeyStore(path).lookup(key)
    assert old is not None and (old.roles, old.kind, old.created, old.revoked) == ((), "user", 0.0, None)
    path.write_text(json.dumps({"version": 1}))
    assert ApiKeyStore(path).records() == [] and ApiKeyStore(path).lookup(key) is None


def test_a_key_with_a_non_hex_id_is_malformed(tmp_path: Path) -> None:
    from gateway.apikeys import split_key

    assert split_key("symbi_0123456789ab_secret") == "0123456789ab"
    for bad in (
        "symbi_0123456789aZ_secret",
        "symbi_0123456789aX_secret",
        "symbi_0123456789ab_",
        "symbi_0123456789a_s",
        "symbi_0123456789ab",
        "symb_0123456789ab_s",
        "symbi_0123456789abc_s",
        "symbi_0123456789AB_secret",
        "symbi_\u0660123456789ab_secret",  # a digit, but not an ASCII one
        "symbi_0123456789ab\n_secret",
    ):
        assert split_key(bad) is None, bad


def test_a_failed_key_file_write_leaves_no_readable_temp_file(tmp_path: Path) -> None:
    """A write that dies half-way (here: a record that cannot be serialised) must not leave
    hashes readable by others: no temporary file stays, whatever the umask."""
    from gateway.apikeys import ApiKeyRecord

    store = ApiKeyStore(tmp_path / "keys.json")
    bad = ApiKeyRecord(id="0" * 12, principal="x", roles=(), kind="user", sha256="h", created=object())  # type: ignore[arg-type]
    old = os.umask(0)
    try:
        with pytest.raises(TypeError):
            store._write([bad])
    finally:
        os.umask(old)
    assert list(tmp_path.iterdir()) == []


def test_the_authenticator_from_config_verifies_jwts_and_keys(tmp_path: Path) -> None:
    from gateway.config.load import load_config

    idp = make_idp(tmp_path)
    cfg = load_config(everything_config(tmp_path, http_extra=jwt_http_section(idp.jwks_path)), {})
    auth = Authenticator.from_config(cfg)
    p = auth.authenticate({"authorization": f"Bearer {idp.token('dana', roles=['dev'])}"})
    assert (p.id, p.roles) == ("dana", ("dev",))
    with pytest.raises(AuthFailed):
        auth.authenticate({"authorization": f"Bearer {idp.token('dana', aud='other')}"})
    key, _ = ApiKeyStore(cfg.api_keys_path).create("bob", ("developer",))
    assert auth.authenticate({"x-api-key": key}).id == "bob"
    with pytest.raises(NoCredentials):
        auth.authenticate({})


def test_a_bad_jwks_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    from gateway.errors import ConfigError
    from gateway.server.auth import load_jwks_file

    (tmp_path / "bad.json").write_text('{"keys": 5}')
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        with pytest.raises(ConfigError) as err:
            load_jwks_file(path)
        assert "http.jwt.jwks_file" in err.value.message and str(path) in err.value.message


def test_api_keys_on_an_unreachable_postgres_refuse_at_start(tmp_path: Path) -> None:
    """[state] postgres_url: the key store is PostgreSQL, opened (and checked) at start."""
    from gateway.config.load import build_config
    from gateway.errors import StateUnavailable
    from gateway.server.auth import open_api_keys
    from tests.conftest import free_port

    cfg = build_config(
        {
            "gateway": {"data_dir": str(tmp_path)},
            "state": {
                "postgres_url": f"postgresql://symbi@127.0.0.1:{free_port()}/postgres",
                "timeout_s": 0.5,
            },
        }
    )
    with pytest.raises(StateUnavailable):
        open_api_keys(cfg)
    assert isinstance(open_api_keys(build_config({"gateway": {"data_dir": str(tmp_path)}})), ApiKeyStore)


def test_principals_carry_their_namespace(tmp_path: Path) -> None:
    """A JWT with sub=alice, an API key for alice and the anonymous principal are three
    different callers: each principal says where it came from (and the JWT its issuer)."""
    idp = make_idp(tmp_path)
    store = ApiKeyStore(tmp_path / "keys.json")
    key, rec = store.create("alice", ("developer",), kind="service")
    auth = Authenticator(
        keys=store,
        jwt=JwtVerifier(JwtSection(issuer=ISSUER, audience=AUDIENCE, jwks_file=idp.jwks_path)),
        anonymous="guest",
    )
    by_jwt = auth.authenticate({"authorization": f"Bearer {idp.token('alice')}"})
    by_key = auth.authenticate({"x-api-key": key})
    anon = auth.authenticate({})
    assert (by_jwt.source, by_jwt.issuer, by_jwt.kind, by_jwt.qualified) == (
        "jwt",
        ISSUER,
        "user",
        f"jwt:{ISSUER}#alice",
    )
    assert (by_key.source, by_key.kind, by_key.claims, by_key.qualified) == (
        "key",
        "service",
        {"key_id": rec.id},
        "key:alice",
    )
    assert (anon.source, anon.kind, anon.qualified) == ("anonymous", "anonymous", "anonymous:guest")


def test_a_new_key_carries_32_random_bytes_and_refuses_an_empty_principal() -> None:
    """Found by mutation testing: nothing pinned the key's entropy (256 bits, 43 url-safe chars)."""
    from gateway.apikeys import KEY_PREFIX, new_key, split_key

    keys = [new_key("alice", ("dev",), "user") for _ in range(3)]
    for key, rec in keys:
        secret = key[len(KEY_PREFIX) :].partition("_")[2]
        assert len(secret) == 43 and len(base64.urlsafe_b64decode(secret + "=")) == 32
        assert (
            split_key(key) == rec.id and rec.sha256 == hash_key(key) and key not in json.dumps(rec.__dict__)
        )
        assert (rec.principal, rec.roles, rec.kind) == ("alice", ("dev",), "user")
    assert len({k for k, _ in keys}) == 3
    with pytest.raises(ValueError):
        new_key("", (), "user")
