"""A JWT whose ``sub`` is an API key principal's id is another principal on the bus (red team
/tmp/rt-runtime A1): it may not message that principal's agents, nor they it, and it cannot
take their names, so a message sent by name reaches the API key principal's agent. Real
``symbi serve`` front (uvicorn on 127.0.0.1), SDK clients, real API keys and RS256 JWTs, the
repo policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bus.test_http_bus import agent, bus_config, make_keys
from tests.server.http.conftest import jwt_http_section, make_idp, run_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_jwt_with_an_api_key_principals_id_is_another_principal_on_the_bus(tmp_path: Path) -> None:
    idp = make_idp(tmp_path)
    cfg = bus_config(tmp_path, jwt_http_section(idp.jwks_path))
    keys = make_keys(cfg)  # "a" and "b": API keys of principal "tester"
    same_sub = idp.token("tester", roles=["tester"])  # an IdP user whose sub is "tester"
    with run_server(cfg) as srv:
        gw = srv.state.gateway
        assert gw is not None
        # the JWT user connects first, with the client name the API key user's client declares
        async with (
            agent(srv.mcp, same_sub) as evil,
            agent(srv.mcp, keys["a"]) as victim,
            agent(srv.mcp, keys["b"]) as worker,
        ):
            names = {x.id: x.name for x in gw.agents}
            client = names[victim.id].split("/", 1)[1]
            assert names[victim.id] == f"tester/{client}"  # the API key principal keeps its name
            assert names[evil.id].startswith("jwt:tester~") and "#" not in names[evil.id]

            for sender, to in ((evil, victim.id), (victim, evil.id), (evil, names[worker.id])):
                refused = await sender.tool("send", to=to, body="x")
                assert refused.is_error and refused.meta["symbi/error"]["code"] == "policy_denied"

            # the API key principal's own agents still reach each other, by id and by name
            await worker.ok("send", to=f"tester/{client}", body={"secret": "deploy token"})
            got = (await victim.ok("receive", wait_ms=5000))["messages"]
            assert [(m["from"], m["body"]) for m in got] == [(worker.id, {"secret": "deploy token"})]
            assert (await evil.ok("receive"))["messages"] == []
