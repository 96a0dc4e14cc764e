"""Server→client requests never cross principals (issue 11 item 5).

Two principals call the same upstream through ``symbi serve`` (real SDK clients over HTTP,
a real upstream that samples): a sampling request made during one principal's call, while
another principal's call is in flight, reaches neither (it is ambiguous over stdio) and is
recorded; with one principal in flight it is relayed to that principal's client.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import ROOT, mutable_config
from tests.server.http.conftest import bearer, run_server

MUTABLE = ROOT / "tests/peers/mutable_server.py"


def _config(tmp_path: Path) -> Path:
    return mutable_config(tmp_path)


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

        assert run.state.gateway is not None
        log = run.state.gateway.audit
        assert log is not None
        log.flush()
        events = [e for e in log.recent(200) if e["type"] == "upstream.client_request"]
        outcomes = [(e["details"]["method"], e["details"]["outcome"], e["principal"]) for e in events]
        assert ("sampling/createMessage", "refused", None) in outcomes
        assert ("sampling/createMessage", "relayed", "key:bob") in outcomes


@pytest.mark.anyio
async def test_isolation_per_principal_serves_both_callers_with_their_own_model(tmp_path: Path) -> None:
    """``isolation = "principal"``: two principals sample the same server at the same time and
    each gets its own model's answer (their calls run on processes of their own)."""
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + 'isolation = "principal"\nisolation_max = 4\n')
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

            async def call(name: str, session: ClientSession) -> None:
                results[name] = await session.call_tool("mut__sample", {"delay": 1.0})

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:  # both in flight when both sample
                    tg.start_soon(call, "bob", bob)
                    tg.start_soon(call, "alice", alice)
            for who, other in (("alice", "bob"), ("bob", "alice")):
                res = results[who]
                assert not res.is_error, res
                text = res.content[0].text
                assert f"I am {who}'s model" in text and other not in text
            assert sorted(asked) == ["alice", "bob"]  # each model asked once: by its own caller's call

        gw = run.state.gateway
        assert gw is not None and gw.audit is not None
        procs = {u.name for u in gw.replicas["mut"]}
        assert len(procs) == 3  # the primary (catalogue) and one process per principal
        gw.audit.flush()
        events = [e for e in gw.audit.recent(200) if e["type"] == "upstream.client_request"]
        outcomes = sorted((e["details"]["outcome"], e["principal"], e["details"]["upstream"]) for e in events)
        assert [(o, p) for o, p, _ in outcomes] == [("relayed", "key:alice"), ("relayed", "key:bob")]
        assert len({u for _, _, u in outcomes}) == 2  # relayed from two different processes


@pytest.mark.anyio
async def test_isolation_per_session_is_bounded_and_idle_processes_stop(tmp_path: Path) -> None:
    """``isolation = "session"``: each session of one principal has its own process; with
    ``isolation_max = 1`` a second session is refused while the first one's call runs, and
    a process idle for ``isolation_idle_s`` is stopped."""
    cfg = _config(tmp_path)
    # idle_s long enough that the sweep cannot stop the second session's process between its
    # call's reply and the check of the process list below on a loaded machine (it did at 0.5 s)
    cfg.write_text(cfg.read_text() + 'isolation = "session"\nisolation_max = 1\nisolation_idle_s = 3\n')
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    key, _ = store.create("alice", ("tester",))
    results: dict[str, Any] = {}
    with run_server(cfg) as run:
        gw = run.state.gateway
        assert gw is not None
        async with (
            httpx2.AsyncClient(headers=bearer(key)) as h1,
            streamable_http_client(run.mcp, http_client=h1) as (r1, w1),
            ClientSession(r1, w1) as first,
            httpx2.AsyncClient(headers=bearer(key)) as h2,
            streamable_http_client(run.mcp, http_client=h2) as (r2, w2),
            ClientSession(r2, w2) as second,
        ):
            await first.initialize()
            await second.initialize()

            async def busy() -> None:
                results["first"] = await first.call_tool("mut__slow", {"seconds": 2})

            async def crowded() -> None:
                await anyio.sleep(0.8)  # the first session's process is busy with its call
                results["second"] = await second.call_tool("mut__echo", {"message": "hi"})

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(busy)
                    tg.start_soon(crowded)
            assert not results["first"].is_error
            refused = results["second"]
            assert refused.is_error and refused.meta["symbi/error"]["code"] == "upstream_unavailable"
            assert len(gw.replicas["mut"]) == 2  # the primary and the first session's process

            # the first session's process is idle now: the next session may have one of its own
            with anyio.fail_after(30):
                again = await second.call_tool("mut__echo", {"message": "hi"})
            assert not again.is_error and "Echo: hi" in again.content[0].text  # type: ignore[union-attr]
            names = [u.name for u in gw.replicas["mut"]]
            assert names == ["mut", "mut-i2"]  # the first one was stopped for the second (max 1)

            with anyio.fail_after(30):  # and an idle one is stopped by the sweep on its own
                while len(gw.replicas["mut"]) > 1:
                    await anyio.sleep(0.2)


@pytest.mark.anyio
async def test_a_removed_isolated_server_leaves_no_sweep_behind(tmp_path: Path) -> None:
    """Second review (session 41): ``Gateway.remove_server`` popped the pool's dicts itself and
    left an isolated server's per-caller pool and its sweep task running for the gateway's
    life; adding the server again started a second sweep beside it. ``UpstreamPool.stop``
    undoes ``start``: the pool is gone and its sweep ends."""
    import asyncio

    from gateway.assemble import make_gateway

    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + 'isolation = "principal"\nisolation_idle_s = 2\n')

    def sweeping() -> bool:
        return any(t.get_name() == "upstream-mut-isolation" for t in asyncio.all_tasks())

    async with make_gateway(load_config(cfg, {})).running() as gw:
        with anyio.fail_after(60):  # a hang guard: the start, then the sweep's 1 s period
            while "mut" not in gw.upstreams or not sweeping():
                await anyio.sleep(0.05)
            isolated = gw.pool.isolated("mut")
            await gw.remove_server("mut")
            assert gw.pool.isolated("mut") is None and isolated is not None and isolated.closed
            while sweeping():
                await anyio.sleep(0.05)
        assert "mut" not in gw.upstreams and not any(t.startswith("mut__") for t in gw.catalog.tools)
