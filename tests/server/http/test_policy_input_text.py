"""A signed token whose claims hold text that is not valid UTF-8 cannot crash the gateway.

PyJWT reads claims with ``json.loads``, which turns the escape ``\\ud800`` into a lone
surrogate; the claims go into the policy input, and regorus dies with SIGSEGV on such text
(gateway/policy/textcheck.py). The call is denied and the same process serves the next one;
the server runs in the test's process, so without the check this test dies, it cannot pass.
"""

from __future__ import annotations

import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.server.http.conftest import Env, bearer


async def _call(env: Env, token: str) -> tuple[bool, str]:
    async with (
        httpx2.AsyncClient(headers=bearer(token)) as hc,
        streamable_http_client(env.run.mcp, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        try:
            res = await s.call_tool("everything__echo", {"message": "surrogate-probe"})
        except MCPError as e:
            return True, str(e)
        text = "".join(getattr(c, "text", "") for c in res.content)
        return bool(res.is_error), text


@pytest.mark.anyio
async def test_a_claim_with_a_lone_surrogate_is_denied_and_the_gateway_lives_on(env: Env) -> None:
    denied, text = await _call(env, env.idp.token("dana", nickname="x\ud800"))
    assert denied and "surrogate-probe" not in text
    denied, text = await _call(env, env.idp.token("dana"))
    assert not denied and "surrogate-probe" in text
