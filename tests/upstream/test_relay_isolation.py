"""Server→client requests never cross principals (issue 11 item 5).

Two principals call the same upstream through ``symbi serve`` (real SDK clients over HTTP,
a real upstream that samples): a sampling request made during one principal's call, while
another principal's call is in flight, reaches neither (it is ambiguous over stdio) and is
recorded; with one principal in flight it is relayed to that principal's client.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import ROOT, write_config
from tests.server.http.conftest import bearer, run_server

MUTABLE = ROOT / "tests/peers/mutable_server.py"


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path,
        f"""
        [sandbox]
        code_tools = false
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        """,
    )


def _model(name: str, asked: list[str]) -> Any:
    async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        asked.append(name)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"I am {name}'s model"), model=name
        )

    return sampling


@pytest.mark.anyio
async def test_sampling_never_reaches_another_principals_model(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    alice_key, _ = store.create("alice", ("tester",))
    bob_key, _ = store.create("bob", ("tester",))
    asked: list[str] = []
    results: dict[str, Any] = {}
    with run_server(cfg) as run:
        async with (
            httpx2.AsyncClient(headers=bearer(alice_key)) as ha,
            streamable_http_client(run.mcp, http_client=ha) as (ra, wa),
            ClientSession(ra, wa, sampling_callback=_model("alice", asked)) as alice,
            httpx2.AsyncClient(headers=bearer(bob_key)) as hb,
            streamable_http_client(run.mcp, http_client=hb) as (rb, wb),
            ClientSession(rb, wb, sampling_callback=_model("bob", asked)) as bob,
        ):
            await alice.initialize()
            await bob.initialize()

            async def bob_samples() -> None:
                try:
                    results["bob"] = await bob.call_tool("mut__sample", {"delay": 1.5})
                except MCPError as e:  # the upstream's tool failed: its sampling was refused
                    results["bob"] = e

            async def alice_waits() -> None:
                await anyio.sleep(0.4)  # alice's call is the most recent one in flight when bob's samples
                results["alice"] = await alice.call_tool("mut__slow", {"seconds": 3})

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(bob_samples)
                    tg.start_soon(alice_waits)
            assert "alice" not in asked  # the attack: alice's model answering bob's upstream
            assert "alice" not in str(results["bob"])
            assert not results["alice"].is_error

            # with one principal in flight the request is unambiguous and relayed to its client
            with anyio.fail_after(30):
                alone = await bob.call_tool("mut__sample", {"delay": 0})
            assert not alone.is_error and "I am bob's model" in alone.content[0].text  # type: ignore[union-attr]
            assert asked == ["bob"]

        log = run.state.gateway.audit  # type: ignore[union-attr]
        log.flush()
        events = [e for e in log.recent(200) if e["type"] == "upstream.client_request"]
        outcomes = [(e["details"]["method"], e["details"]["outcome"], e["principal"]) for e in events]
        assert ("sampling/createMessage", "refused", None) in outcomes
        assert ("sampling/createMessage", "relayed", "key:bob") in outcomes
