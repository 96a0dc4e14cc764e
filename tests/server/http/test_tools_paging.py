"""``tools/list`` in pages over streamable HTTP, with the real SDK client at 2,000 tools.

One gateway (the HTTP front in a thread) in front of one real SDK server over stdio with
2,000 tools (``bench/peers/growth_upstream.py``: echo tools, ``extra``, and ``churn``, which
removes or re-adds ``extra`` and announces the change). Listed in one reply those tools are
over the SDK client's default 1 MiB SSE event limit; in pages of ``mcp.list_page_size`` they
are not. Alice (admin) sees every tool; Bob only three of them, spread over the pages.
Cursors are attacked: altered, made up, another principal's, and outlived.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.catalog import LiveCatalog
from tests.conftest import POLICY, ROOT, write_config
from tests.server.http.conftest import Running, bearer, roles_policy_data, run_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # 2,000 tools to start, verify and screen

UPSTREAM = ROOT / "bench" / "peers" / "growth_upstream.py"
TOOLS = 2000
PAGE = 500
BOB_TOOLS = ["big__tool_03", "big__tool_777", "big__tool_1990"]  # one on page 1, 2 and 4


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, dict[str, str]]]:
    from gateway.config import load_config
    from gateway.server.auth import ApiKeyStore

    tmp = tmp_path_factory.mktemp("paging")
    roles = {
        "admin": {"tools": ["*"], "resources": ["**"], "prompts": ["**"]},
        "narrow": {"tools": BOB_TOOLS, "resources": [], "prompts": []},
    }
    roles_policy_data(tmp, roles, ("big",))
    cfg = write_config(
        tmp,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{tmp / "data.json"}"

        [sandbox]
        code_tools = false

        [bus]
        enabled = false

        [mcp]
        list_page_size = {PAGE}
        connection_timeout_s = 120

        [servers.big]
        command = "{sys.executable}"
        args = ["{UPSTREAM}", "--name", "big", "--tools", "{TOOLS}"]
        verification = "warn"
        """,
    )
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    keys = {"alice": store.create("alice", ("admin",))[0], "bob": store.create("bob", ("narrow",))[0]}
    with run_server(cfg, timeout=180) as run:
        yield run, keys


@asynccontextmanager
async def session(run: Running, key: str) -> AsyncIterator[ClientSession]:
    """A handshake-era SDK session with the client's default SSE event limit (1 MiB)."""
    async with AsyncExitStack() as stack:
        hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(key), timeout=60))
        r, w = await stack.enter_async_context(streamable_http_client(run.mcp, http_client=hc))
        s = await stack.enter_async_context(ClientSession(r, w))
        await s.initialize()
        yield s


async def list_all(s: ClientSession) -> tuple[list[str], list[int]]:
    """Every tool name, following nextCursor; and the size of each page."""
    names: list[str] = []
    cursor: str | None = None
    sizes: list[int] = []
    while True:
        page = await s.list_tools(params=_at(cursor))
        sizes.append(len(page.tools))
        names += [t.name for t in page.tools]
        cursor = page.next_cursor
        if cursor is None:
            return names, sizes


def _at(cursor: str | None) -> types.PaginatedRequestParams:
    return types.PaginatedRequestParams(cursor=cursor)


def _live(run: Running) -> LiveCatalog:
    gw = run.state.gateway
    assert gw is not None
    return gw.live


async def _churn(s: ClientSession, run: Running) -> None:
    """One catalogue rebuild: ``churn`` toggles ``extra`` and the gateway re-lists."""
    before = _live(run).digest  # "extra" comes or goes: the order of names changes
    result = await s.call_tool("big__churn", {})
    assert not result.is_error
    deadline = time.monotonic() + 60
    while _live(run).digest == before:
        assert time.monotonic() < deadline, "no rebuild after the list change"
        await anyio.sleep(0.05)


async def test_the_sdk_client_lists_2000_tools_in_pages(gw: tuple[Running, dict[str, str]]) -> None:
    run, keys = gw
    async with session(run, keys["alice"]) as s:
        names, sizes = await list_all(s)
    assert len(set(names)) == len(names)  # none twice
    assert len([n for n in names if n.startswith("big__")]) == TOOLS  # plus the gateway's built-ins
    assert sizes == [PAGE] * (len(names) // PAGE) + [len(names) % PAGE]
    assert {"big__tool_00", "big__tool_1997", "big__extra", "big__churn"} <= set(names)


async def test_pages_show_only_what_the_policy_allows(gw: tuple[Running, dict[str, str]]) -> None:
    run, keys = gw
    async with session(run, keys["bob"]) as s:
        names, sizes = await list_all(s)
    assert sorted(names) == sorted(BOB_TOOLS)
    # the stretch without any of Bob's tools is walked over, not sent as an empty page (the
    # last page may be empty: the gateway's built-ins after his last tool are not his)
    assert sizes in ([1, 1, 1], [1, 1, 1, 0])


def _altered(cursor: str) -> list[str]:
    body, mac = cursor.split(".")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
    version, offset = raw.split(":")
    forged = base64.urlsafe_b64encode(f"{version}:{int(offset) + 1}".encode()).rstrip(b"=").decode()
    # the first character: the last one of unpadded base64 carries padding bits a decoder may
    # ignore, so flipping it can leave the MAC's bytes unchanged (the test then failed at random)
    flipped_mac = ("A" if mac[0] != "A" else "B") + mac[1:]
    return [
        f"{forged}.{mac}",  # another offset under the old MAC
        f"{body}.{flipped_mac}",  # the MAC altered
        body,  # no MAC
        "not-a-cursor",
        "",
        "..",
        "%%%.%%%",
        base64.urlsafe_b64encode(b"1:0").decode() + ".AAAA",  # made up
    ]


async def test_an_altered_or_made_up_cursor_is_invalid_params(gw: tuple[Running, dict[str, str]]) -> None:
    run, keys = gw
    async with session(run, keys["alice"]) as s:
        first = await s.list_tools()
        assert first.next_cursor is not None
        for bad in _altered(first.next_cursor):
            with pytest.raises(MCPError) as info:
                await s.list_tools(params=_at(bad))
            assert info.value.code == types.INVALID_PARAMS, bad
        # the genuine cursor still works after the attempts
        second = await s.list_tools(params=_at(first.next_cursor))
        assert second.tools and second.tools[0].name not in {t.name for t in first.tools}


async def test_another_principals_cursor_is_refused(gw: tuple[Running, dict[str, str]]) -> None:
    run, keys = gw
    async with session(run, keys["alice"]) as alice, session(run, keys["bob"]) as bob:
        alices = (await alice.list_tools()).next_cursor
        assert alices is not None
        with pytest.raises(MCPError) as info:
            await bob.list_tools(params=_at(alices))
        assert info.value.code == types.INVALID_PARAMS


async def test_a_listing_stays_on_its_snapshot_while_the_catalogue_changes(
    gw: tuple[Running, dict[str, str]],
) -> None:
    run, keys = gw
    async with session(run, keys["alice"]) as s:
        before, _ = await list_all(s)
        first = await s.list_tools()
        assert first.next_cursor is not None
        await _churn(s, run)  # "extra" toggled: the catalogue changed under the listing
        changed, _ = await list_all(s)
        # the rest of the listing that began before the change: its snapshot's order, each
        # name once, showing what the current catalogue serves
        names = [t.name for t in first.tools]
        cursor: str | None = first.next_cursor
        while cursor is not None:
            page = await s.list_tools(params=_at(cursor))
            names += [t.name for t in page.tools]
            cursor = page.next_cursor
        assert len(names) == len(set(names))
        assert set(names) == set(before) & set(changed)
        # a cursor whose order was replaced by more than RETAINED others since: refused (this
        # gateway keeps none, to keep the test short; the class default is LiveCatalog.RETAINED)
        _live(run).RETAINED = 0
        stale = (await s.list_tools()).next_cursor
        assert stale is not None
        await _churn(s, run)
        with pytest.raises(MCPError) as info:
            await s.list_tools(params=_at(stale))
        assert info.value.code == types.INVALID_PARAMS
        # the order it began on served again ("extra", re-added at the end of the upstream's
        # list, removed again): a snapshot is named by its order, so the cursor is valid again
        await _churn(s, run)
        assert (await s.list_tools(params=_at(stale))).tools
        # listing from the start works
        again, _ = await list_all(s)
        assert len([n for n in again if n.startswith("big__")]) in (TOOLS, TOOLS - 1)
