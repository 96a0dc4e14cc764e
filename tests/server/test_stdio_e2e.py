"""End to end over stdio: the SDK client → ``symbi mcp`` → real upstreams.

Upstreams: @modelcontextprotocol/server-everything and -filesystem (npm), mcp-server-time
(PyPI), and a small SDK server of our own that changes its tools at run time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, types

from tests.conftest import ROOT, peers_config, upstream_writable, write_config
from tests.server._clients import gateway_params, stdio_session

pytestmark = pytest.mark.anyio
MUTABLE = ROOT / "tests/peers/mutable_server.py"


def mutable_config(tmp_path: Path, record: Path | None = None, protocol: str = "legacy") -> Path:
    env = f'env = {{ RECORD_FILE = "{record}" }}' if record else ""
    return write_config(
        tmp_path,
        f"""
        [servers.mut]
        command = "{sys.executable}"
        args = ["{MUTABLE}"]
        verification = "warn"
        protocol = "{protocol}"
        {env}
        """,
    )


async def test_lists_and_calls_tools_of_all_three_upstreams(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    async with stdio_session(cfg) as s:
        names = {t.name for t in (await s.list_tools()).tools}
        assert {"everything__echo", "fs__read_text_file", "time__get_current_time"} <= names
        assert {n.split("__")[0] for n in names} <= {
            "everything",
            "fs",
            "time",
            "sandbox",
            "memory",
            "knowledge",
            "bus",
        }  # built-ins too

        echo = await s.call_tool("everything__echo", {"message": "über ✓"})
        assert not echo.is_error and echo.content[0].text == "Echo: über ✓"  # type: ignore[union-attr]

        f = await s.call_tool("fs__read_text_file", {"path": str(tmp_path / "files/hello.txt")})
        assert not f.is_error and "hello from the test folder" in f.content[0].text  # type: ignore[union-attr]

        t = await s.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not t.is_error and "UTC" in t.content[0].text  # type: ignore[union-attr]


async def test_modern_era_client_works_too(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    async with Client(gateway_params(cfg)) as c:
        assert c.protocol_version == "2026-07-28"
        r = await c.call_tool("everything__get-sum", {"a": 2, "b": 3})
        assert not r.is_error and "5" in r.content[0].text  # type: ignore[union-attr]


async def test_resources_and_prompts_are_routed_to_their_upstream(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    async with stdio_session(cfg) as s:
        uris = [r.uri for r in (await s.list_resources()).resources]
        assert "demo://resource/static/document/architecture.md" in uris
        read = await s.read_resource("demo://resource/static/document/architecture.md")
        assert read.contents and read.contents[0].uri == "demo://resource/static/document/architecture.md"
        templates = [t.uri_template for t in (await s.list_resource_templates()).resource_templates]
        assert "demo://resource/dynamic/text/{resourceId}" in templates
        dyn = await s.read_resource("demo://resource/dynamic/text/1")
        assert dyn.contents

        prompts = {p.name for p in (await s.list_prompts()).prompts}
        assert "everything__args-prompt" in prompts
        got = await s.get_prompt("everything__args-prompt", {"city": "Lyon", "state": "ARA"})
        assert "Lyon" in str(got.messages[0].content)


async def test_unknown_resource_and_prompt_are_protocol_errors(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    cfg = peers_config(tmp_path)
    async with stdio_session(cfg) as s:
        with pytest.raises(MCPError) as e1:
            await s.read_resource("demo://nowhere/at/all")
        assert e1.value.error.code == types.INVALID_PARAMS
        with pytest.raises(MCPError) as e2:
            await s.get_prompt("everything__no-such-prompt")
        assert e2.value.error.code == types.INVALID_PARAMS
        # the session is still fine afterwards
        assert not (await s.call_tool("everything__echo", {"message": "still here"})).is_error


async def test_progress_is_relayed(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with stdio_session(cfg) as s:
        r = await s.call_tool(
            "everything__trigger-long-running-operation",
            {"duration": 0.6, "steps": 3},
            progress_callback=on_progress,
        )
        assert not r.is_error
    assert [p for p, _ in seen] == [1, 2, 3]
    assert all(t == 3 for _, t in seen)


@pytest.mark.parametrize("protocol", ["legacy", "auto"])
async def test_list_changed_is_relayed_to_handshake_clients(tmp_path: Path, protocol: str) -> None:
    # "auto": the upstream speaks 2026-07-28 and reports changes on a listen stream
    cfg = mutable_config(tmp_path, protocol=protocol)
    changed = anyio.Event()

    async def handler(msg: object) -> None:
        if isinstance(msg, types.ToolListChangedNotification):
            changed.set()

    async with stdio_session(cfg, message_handler=handler) as s:
        before = {t.name for t in (await s.list_tools()).tools}
        assert "mut__extra" not in before
        changed = anyio.Event()  # ignore anything sent at start-up
        r = await s.call_tool("mut__add_tool", {})
        assert not r.is_error
        with anyio.fail_after(10):
            await changed.wait()
        with anyio.fail_after(10):
            while "mut__extra" not in {t.name for t in (await s.list_tools()).tools}:
                await anyio.sleep(0.05)
        assert (await s.call_tool("mut__extra", {})).content[0].text == "extra!"  # type: ignore[union-attr]


async def test_list_changed_reaches_modern_clients_through_listen(tmp_path: Path) -> None:
    cfg = mutable_config(tmp_path)
    async with Client(gateway_params(cfg)) as c:
        assert c.protocol_version == "2026-07-28"
        async with c.listen(tools_list_changed=True) as sub:
            r = await c.call_tool("mut__add_tool", {})
            assert not r.is_error
            with anyio.fail_after(10):
                async for _event in sub:
                    break
        names = {t.name for t in (await c.list_tools()).tools}
        assert "mut__extra" in names


async def test_bad_calls_get_readable_errors_and_the_session_survives(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    async with stdio_session(cfg) as s:
        unknown = await s.call_tool("nope__tool", {})
        assert unknown.is_error and unknown.meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
        wrong = await s.call_tool("everything__get-sum", {"a": "two", "b": 3})
        assert wrong.is_error and wrong.meta["symbi/error"]["code"] == "arguments_invalid"  # type: ignore[index]
        assert any("a" in r for r in wrong.meta["symbi/error"]["reasons"])  # type: ignore[index]
        ok = await s.call_tool("everything__get-sum", {"a": 2, "b": 3})
        assert not ok.is_error


async def test_completion_is_routed_to_the_owning_upstream(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)
    async with stdio_session(cfg) as s:
        res = await s.complete(
            types.PromptReference(type="ref/prompt", name="everything__completable-prompt"),
            {"name": "department", "value": "E"},
        )
        assert res.completion.values and all(v.startswith("E") for v in res.completion.values)


async def test_cancellation_reaches_the_upstream(tmp_path: Path) -> None:
    from mcp.shared.exceptions import MCPError

    record = upstream_writable(tmp_path) / "calls.jsonl"
    cfg = mutable_config(tmp_path, record=record)
    async with stdio_session(cfg) as s:
        # the client gives up after 0.5 s: it cancels, the gateway cancels upstream
        with pytest.raises(MCPError):
            await s.call_tool("mut__slow", {"seconds": 20}, read_timeout_seconds=0.5)
        with anyio.fail_after(10):
            while "slow_cancelled" not in (record.read_text() if record.exists() else ""):
                await anyio.sleep(0.05)
        assert not (await s.call_tool("mut__echo", {"message": "after"})).is_error


async def test_tools_list_comes_in_pages_over_stdio_too(tmp_path: Path) -> None:
    """The stdio front pages ``tools/list`` as the HTTP one does (one ``Front``): with
    ``mcp.list_page_size = 3`` the SDK client follows nextCursor to the whole catalogue,
    each tool once, and a forged cursor is invalid params."""
    from mcp.shared.exceptions import MCPError

    cfg = write_config(
        tmp_path,
        f"""
        [mcp]
        list_page_size = 3

        [servers.everything]
        command = "node"
        args = ["{ROOT / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"}", "stdio"]
        verification = "warn"
        """,
    )
    async with stdio_session(cfg) as s:
        names: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        while True:
            page = await s.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
            names += [t.name for t in page.tools]
            sizes.append(len(page.tools))
            cursor = page.next_cursor
            if cursor is None:
                break
        assert len(names) == len(set(names)) and "everything__echo" in names
        assert max(sizes) <= 3 and len(sizes) >= len(names) // 3
        with pytest.raises(MCPError) as info:
            await s.list_tools(
                params=types.PaginatedRequestParams(cursor="bm90LW91cnM.AAAAAAAAAAAAAAAAAAAAAA")
            )
        assert info.value.code == types.INVALID_PARAMS
