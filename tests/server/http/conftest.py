"""Fixtures for the HTTP front: a real uvicorn on a free 127.0.0.1 port, real keys and JWTs.

The server runs in a thread of the test process (same code path as ``symbi serve``:
``build_app`` + uvicorn) so tests can also look at the app's state; the upstream is the
real npm server-everything over stdio.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from gateway.server.http import HttpState, build_app
from gateway.server.sessions import http_protocol
from tests.conftest import EVERYTHING_JS, POLICY, TEST_POLICY_DATA, write_config

ISSUER = "https://idp.test.invalid"
AUDIENCE = "symbi-test"


@dataclass
class Running:
    base: str
    config_path: Path
    state: HttpState
    server: uvicorn.Server

    @property
    def mcp(self) -> str:
        return self.base + "/mcp"


@contextlib.contextmanager
def run_server(config_path: Path, *, wait_ready: bool = True, timeout: float = 60.0) -> Iterator[Running]:
    """Start ``build_app`` under uvicorn in a thread; stop it on exit."""
    cfg = load_config(config_path, {})
    # The port is held from here to the server's close: a port only checked free here would stay
    # unbound through build_app and the upstreams' start (seconds), for another process to take.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update={"port": port})})
    app = build_app(cfg)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            log_config=None,
            http=http_protocol(
                cfg.http.header_timeout_s, cfg.http.max_header_bytes, cfg.http.max_connections
            ),  # as symbi serve runs it
            loop="uvloop",
        )
    )
    thread = threading.Thread(target=server.run, args=([sock],), name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during start-up")
            if server.started:
                if not wait_ready:
                    break
                try:
                    if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway not ready")
            time.sleep(0.05)
        yield Running(base=base, config_path=config_path, state=app.state.symbi, server=server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


DEVELOPER_TOOLS = ["everything__echo", "everything__get-sum"]


def assert_pages_list_the_roles_tools(pages: list[dict[str, Any]], role: str) -> None:
    """An admin's listing holds the developer's tools among more pages; a developer's only those
    (the tools the policy hides are on no page)."""
    names = [t["name"] for p in pages for t in p["result"]["tools"]]
    if role == "admin":
        assert len(pages) > 2 and set(DEVELOPER_TOOLS) < set(names)
    else:
        assert sorted(names) == sorted(DEVELOPER_TOOLS)


def roles_policy_data(folder: Path, roles: dict[str, Any], unverified: tuple[str, ...] = ()) -> Path:
    """The shared test policy data with only ``roles`` (no named principals: API key users get
    their roles from the key) and ``unverified`` upstreams allowed unverified; ``folder/data.json``."""
    doc = json.loads(TEST_POLICY_DATA.read_text())
    data = doc["symbi_data"]
    data["principals"] = {}
    data["roles"] = roles
    data["upstreams"].update({name: {"allow_unverified": True} for name in unverified})
    path = folder / "data.json"
    path.write_text(json.dumps(doc))
    return path


def policy_data(tmp_path: Path) -> Path:
    """The shared test policy data, with this suite's roles: "developer" may call only
    DEVELOPER_TOOLS (anything else is a policy deny), "admin" may call everything."""
    doc = json.loads(TEST_POLICY_DATA.read_text())
    everything = {"resources": ["**"], "prompts": ["**"]}
    # the anonymous principal of the Inspector test gets its roles from the policy data
    # and the API key principal "root" is an admin by the data (a JWT with sub=root is not)
    doc["symbi_data"]["principals"] = {
        "anonymous": {"inspector": {"roles": ["developer"]}},
        "keys": {"root": {"roles": ["admin"]}},
    }
    doc["symbi_data"]["roles"] = {
        "developer": {"tools": DEVELOPER_TOOLS, **everything},
        "admin": {"tools": ["*"], **everything},
    }
    path = tmp_path / "policy-data.json"
    path.write_text(json.dumps(doc))
    return path


# A policy for the denial tests: lists allowed, a call allowed unless its ``message`` argument
# is "forbidden" (a denial the test makes at will, the same tool allowed beside it).
DENY_FORBIDDEN_ECHO = """
package symbi
import rego.v1

default decision := {"allow": false, "reasons": ["not allowed"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if input.action == "list"

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    input.action == "call"
    input.arguments.message != "forbidden"
}
"""


def everything_config(
    tmp_path: Path, http_extra: str = "", top_extra: str = "", policy: Path | None = POLICY
) -> Path:
    """A config with server-everything (stdio, verification warn), the real policy (or
    ``policy``; None: no [policy], for policies off, where its keys are refused) with this
    suite's data, and an [http] section; ``top_extra`` may open tables of its own (``[runtime]``)."""
    section = f'[policy]\npath = "{policy}"\ndata = "{policy_data(tmp_path)}"' if policy else "[policy]"
    return write_config(
        tmp_path,
        f"""
        {section}

        [gateway]
        data_dir = "{tmp_path / "data"}"
        log_format = "json"
        {top_extra}
        [http]
        {http_extra}

        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )


# -- keys and tokens ----------------------------------------------------------------------------


@dataclass
class Keys:
    admin: str
    user: str
    other_user: str
    store: ApiKeyStore


def make_keys(config_path: Path) -> Keys:
    store = ApiKeyStore(load_config(config_path, {}).api_keys_path)
    admin, _ = store.create("alice", ("admin", "developer"))
    user, _ = store.create("bob", ("developer",))
    other, _ = store.create("carol", ("developer",))
    return Keys(admin=admin, user=user, other_user=other, store=store)


@dataclass
class Idp:
    """A test identity provider: an RSA and an EC key, published as a JWKS file."""

    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    jwks: dict[str, Any]
    jwks_path: Path

    def token(
        self,
        sub: str = "dana",
        *,
        roles: Any = ("developer",),
        alg: str = "RS256",
        kid: str | None = None,
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 300,
            "roles": list(roles) if isinstance(roles, (list, tuple)) else roles,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self.rsa_key if alg.startswith("RS") else self.ec_key
        return jwt.encode(
            claims, key, algorithm=alg, headers={"kid": kid or ("rsa1" if alg.startswith("RS") else "ec1")}
        )


def make_idp(tmp_path: Path) -> Idp:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    jwk_rsa = json.loads(RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk_rsa.update(kid="rsa1", alg="RS256", use="sig")
    jwk_ec = json.loads(ECAlgorithm.to_jwk(ec_key.public_key()))
    jwk_ec.update(kid="ec1", alg="ES256", use="sig")
    jwks = {"keys": [jwk_rsa, jwk_ec]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    return Idp(rsa_key=rsa_key, ec_key=ec_key, jwks=jwks, jwks_path=path)


def jwt_http_section(jwks_path: Path | None = None, jwks_url: str | None = None) -> str:
    src = f'jwks_file = "{jwks_path}"' if jwks_path else f'jwks_url = "{jwks_url}"'
    return f"""
        [http.jwt]
        issuer = "{ISSUER}"
        audience = "{AUDIENCE}"
        algorithms = ["RS256", "ES256"]
        {src}
        roles_claim = "roles"
    """


@dataclass
class Env:
    run: Running
    keys: Keys
    idp: Idp


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One shared gateway (API keys + JWT from a JWKS file) for the read-mostly tests."""
    tmp = tmp_path_factory.mktemp("http-env")
    idp = make_idp(tmp)
    cfg = everything_config(
        tmp,
        http_extra='authorization_servers = ["https://idp.test.invalid"]\n' + jwt_http_section(idp.jwks_path),
    )
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        yield Env(run=run, keys=keys, idp=idp)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
