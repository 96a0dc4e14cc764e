"""A signed token whose identity claims hold text that is not valid UTF-8 is refused at login.

PyJWT reads claims with ``json.loads``, which turns the escape ``\\ud800`` into a lone
surrogate. The subject and roles become the principal: its name goes into the audit record,
log lines, metrics labels and the runtime's ids, none of which can write such text. So the
token is refused where it enters (gateway/server/auth.py, gateway/textcheck.py), with a
reason naming the claim, and everything the gateway accepted before stays verifiable.
"""

from __future__ import annotations

import subprocess
import sys

import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ROOT, initialize_request
from tests.server.http.conftest import Env, bearer


async def _call(env: Env, token: str) -> str:
    """The echoed text, or "refused: <status>" / "denied" when the gateway says no."""
    async with (
        httpx2.AsyncClient(headers=bearer(token)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        try:
            res = await s.call_tool("everything__echo", {"message": "claims-probe"})
        except MCPError:
            return "denied"
        return "denied" if res.is_error else "".join(getattr(c, "text", "") for c in res.content)


def _status(env: Env, token: str) -> int:
    init = initialize_request()
    headers = {**bearer(token), "Accept": "application/json, text/event-stream"}
    return httpx2.post(env.run.mcp, json=init, headers=headers, timeout=30).status_code


def _audit_verifies(env: Env) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", "--config", str(env.run.config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "dana\ud800"},
        {"roles": ["developer", "x\udcff"]},
        {"roles": "developer \ud800"},
        {"namespace": {"a\ud800": 1}},
        {"nickname": "x\ud800"},
    ],
    ids=["sub", "roles", "roles-string", "other-claim-key", "other-claim-value"],
)
@pytest.mark.anyio
async def test_a_claim_that_is_not_utf8_is_refused_and_nothing_is_lost(
    env: Env, claims: dict[str, object]
) -> None:
    assert await _call(env, env.idp.token("dana")) == "Echo: claims-probe"
    token = env.idp.token(**claims)  # type: ignore[arg-type]
    assert _status(env, token) == 401
    assert await _call(env, env.idp.token("dana")) == "Echo: claims-probe"
    verified = _audit_verifies(env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.anyio
async def test_an_api_key_whose_principal_is_not_utf8_is_refused(env: Env) -> None:
    """The key file is JSON too (``json.loads``): a record written with the escape is refused."""
    key, _ = env.keys.store.create("erin\udcff", ("developer",))
    assert _status(env, key) == 401
    key, _ = env.keys.store.create("erin", ("developer", "\ud800"))
    assert _status(env, key) == 401
    key, _ = env.keys.store.create("erin", ("developer",), kind="agent\udcff")
    assert _status(env, key) == 401
    assert await _call(env, env.keys.user) == "Echo: claims-probe"
    verified = _audit_verifies(env)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.anyio
async def test_a_token_whose_kid_is_not_utf8_is_refused(env: Env) -> None:
    """The token's header is JSON too (``json.loads``): a ``kid`` holding the escape matches no
    key (401, as any unknown kid; probed in session 18, no change needed) and the gateway goes on.
    (Another header field holding it, ``typ`` say, is accepted: the header is read for the key
    and the algorithm only, and nothing keeps it.)"""
    assert _status(env, env.idp.token("dana", kid="rsa1\ud800")) == 401
    assert await _call(env, env.idp.token("dana")) == "Echo: claims-probe"
    verified = _audit_verifies(env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
