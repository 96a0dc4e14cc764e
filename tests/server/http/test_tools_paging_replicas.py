"""A ``tools/list`` cursor across replicas: page 1 from one gateway, page 2 from another.

Three real gateways (the HTTP front in threads, each with its own data dir, as the replicas
of ``deploy/compose.yaml``), each in front of its own copy of one real SDK upstream
(``bench/peers/growth_upstream.py``, 30 tools) and so serving the same catalogue. ``a`` and
``b`` share ``[bus] secret`` (SYMBI_BUS_SECRET in a deployment); ``lone`` does not, so its
cursor key comes from its own data dir's ``bus-secret``. The clients are 2026-07-28 ones:
stateless requests, no session to pin them to a replica behind the balancer.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client, ClientSession, MCPError, types
from mcp.client.streamable_http import streamable_http_client

from gateway.catalog import LiveCatalog
from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import POLICY, ROOT, write_config
from tests.server.http.conftest import Running, bearer, roles_policy_data, run_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # three gateways to start

UPSTREAM = ROOT / "bench" / "peers" / "growth_upstream.py"
PAGE = 10
Replica = tuple[Running, dict[str, str]]  # the gateway, and its API keys by principal


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def _gateway(folder: Path, secret: str | None) -> tuple[Path, dict[str, str]]:
    folder.mkdir()
    roles_policy_data(folder, {"admin": {"tools": ["*"], "resources": ["**"], "prompts": ["**"]}}, ("big",))
    bus = f'secret = "{secret}"' if secret is not None else ""
    cfg = write_config(
        folder,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{folder / "data.json"}"

        [sandbox]
        code_tools = false

        [bus]
        enabled = false
        {bus}

        [mcp]
        list_page_size = {PAGE}

        [servers.big]
        command = "{sys.executable}"
        args = ["{UPSTREAM}", "--name", "big", "--tools", "30"]
        verification = "warn"
        """,
    )
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)  # one principal, a key per replica
    return cfg, {who: store.create(who, ("admin",))[0] for who in ("alice", "bob")}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Replica]]:
    tmp = tmp_path_factory.mktemp("replicas")
    shared = base64.b64encode(os.urandom(32)).decode()
    made = {
        "a": _gateway(tmp / "a", shared),
        "b": _gateway(tmp / "b", shared),
        "lone": _gateway(tmp / "lone", None),
    }
    with ExitStack() as stack:
        yield {name: (stack.enter_context(run_server(cfg)), keys) for name, (cfg, keys) in made.items()}


@asynccontextmanager
async def stateless(replica: Replica, who: str = "alice") -> AsyncIterator[ClientSession]:
    run, keys = replica
    async with AsyncExitStack() as stack:
        hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(keys[who]), timeout=60))
        transport = streamable_http_client(run.mcp, http_client=hc)
        c = await stack.enter_async_context(Client(transport, mode="2026-07-28"))
        yield c.session


def _live(replica: Replica) -> LiveCatalog:
    gw = replica[0].state.gateway
    assert gw is not None
    return gw.live


def _at(cursor: str | None) -> types.PaginatedRequestParams:
    return types.PaginatedRequestParams(cursor=cursor)


async def test_the_next_page_comes_from_another_replica(replicas: dict[str, Replica]) -> None:
    a, b = replicas["a"], replicas["b"]
    assert _live(a).digest == _live(b).digest  # the same catalogue, the same snapshot name
    async with stateless(a) as on_a, stateless(b) as on_b:
        whole: list[str] = []
        cursor: str | None = None
        while True:  # one replica alone: the reference listing
            page = await on_a.list_tools(params=_at(cursor))
            whole += [t.name for t in page.tools]
            if (cursor := page.next_cursor) is None:
                break
        assert len(whole) > 2 * PAGE and len(set(whole)) == len(whole)
        names: list[str] = []
        cursor, sides, turn = None, [on_a, on_b], 0
        while True:  # the balancer sends each request elsewhere: a, b, a, b...
            page = await sides[turn % 2].list_tools(params=_at(cursor))
            names += [t.name for t in page.tools]
            turn += 1
            if (cursor := page.next_cursor) is None:
                break
    assert names == whole  # the same order: none twice, none skipped
    assert turn > 2


async def test_a_replica_without_the_shared_secret_or_another_principal_is_refused(
    replicas: dict[str, Replica],
) -> None:
    a, b, lone = replicas["a"], replicas["b"], replicas["lone"]
    assert _live(lone).digest == _live(a).digest  # refused for its key, not for its catalogue
    async with stateless(a) as on_a:
        first = await on_a.list_tools()
    assert first.next_cursor is not None
    async with stateless(lone) as on_lone, stateless(b, "bob") as bob_on_b:
        for side in (on_lone, bob_on_b):
            with pytest.raises(MCPError) as info:
                await side.list_tools(params=_at(first.next_cursor))
            assert info.value.code == types.INVALID_PARAMS
        # the lone gateway's own cursors work on it
        own = (await on_lone.list_tools()).next_cursor
        assert own is not None and (await on_lone.list_tools(params=_at(own))).tools
