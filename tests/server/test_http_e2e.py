"""End to end over streamable HTTP: the SDK client → ``symbi serve`` (127.0.0.1) → real upstreams."""

from __future__ import annotations

from pathlib import Path

import httpx
import mcp.types as types
import pytest
from mcp import Client

from tests.conftest import peers_config
from tests.server._http import serve

pytestmark = pytest.mark.anyio

ANON = """
[http]
anonymous_principal = "tester"
"""


async def test_http_lists_and_calls_tools_of_all_three_upstreams(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path, extra=ANON)
    with serve(cfg) as base:
        for mode in ("legacy", "auto"):
            async with Client(base + "/mcp", mode=mode) as c:
                names = {t.name for t in (await c.list_tools()).tools}
                assert {"everything__echo", "fs__read_text_file", "time__get_current_time"} <= names
                r = await c.call_tool("everything__echo", {"message": f"via {mode}"})
                assert r.content[0].text == f"Echo: via {mode}"  # type: ignore[union-attr]
                t = await c.call_tool("time__get_current_time", {"timezone": "UTC"})
                assert not t.is_error
                f = await c.call_tool("fs__read_text_file", {"path": str(tmp_path / "files/hello.txt")})
                assert "hello" in f.content[0].text  # type: ignore[union-attr]
                read = await c.read_resource("demo://resource/static/document/architecture.md")
                assert read.contents
                got = await c.get_prompt("everything__simple-prompt")
                assert got.messages


async def test_http_relays_progress(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path, extra=ANON)
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    with serve(cfg) as base:
        async with Client(base + "/mcp", mode="legacy") as c:
            r = await c.call_tool(
                "everything__trigger-long-running-operation",
                {"duration": 0.4, "steps": 2},
                progress_callback=on_progress,
            )
            assert not r.is_error
    assert seen == [1, 2]


def test_http_without_credentials_is_refused(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path)  # no anonymous principal named
    with serve(cfg, ready_path="/healthz") as base:
        r = httpx.post(
            base + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 401
        assert r.headers["www-authenticate"].lower().startswith("bearer")


def test_http_rejects_a_foreign_host_header(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path, extra=ANON)
    with serve(cfg) as base:
        r = httpx.post(
            base + "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
            headers={"host": "evil.example:80", "accept": "application/json, text/event-stream"},
        )
        assert r.status_code in (400, 403, 421)


def test_http_malformed_json_rpc_gets_an_error_and_the_server_lives(tmp_path: Path) -> None:
    cfg = peers_config(tmp_path, extra=ANON)
    with serve(cfg) as base:
        hdr = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        bad = httpx.post(base + "/mcp", content=b"{not json", headers=hdr)
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == types.PARSE_ERROR
        assert httpx.get(base + "/healthz").status_code == 200
