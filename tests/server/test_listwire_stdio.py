"""``tools/list`` answered in wire form (``gateway.server.listwire``) on the stdio front.

Two real ``symbi mcp`` processes in front of server-everything and the built-in tools, in pages
of 4, sharing ``[bus] secret`` (so the same cursors): one with ``mcp.list_fast_path`` on, one off
(every page shaped by the SDK's runner). Read raw off their stdout, in a handshake-era session
and in stateless 2026-07-28 requests, for an admin and for a developer whom the policy shows
two tools, every page with its cursor must be JSON-equal (the developer's pages hold none of
the hidden tools); a made-up cursor is refused alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from mcp import types
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from tests.conftest import ROOT, SYMBI
from tests.server.http.conftest import assert_pages_list_the_roles_tools
from tests.server.http.test_listwire import _config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # two gateways to start

MODERN = "2026-07-28"
CLIENT = {"name": "t", "version": "1"}


class Lines:
    """JSON-RPC over one ``symbi mcp`` process's stdin/stdout, a message a line."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._lines = TextReceiveStream(proc.stdout)
        self._buf = ""
        self._id = 0

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send(json.dumps(msg).encode() + b"\n")

    async def _line(self) -> str:
        while "\n" not in self._buf:
            self._buf += await self._lines.receive()
        line, self._buf = self._buf.split("\n", 1)
        return line

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        await self.send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        with anyio.fail_after(60):
            while True:
                msg = json.loads(await self._line())
                if msg.get("id") == self._id and "method" not in msg:
                    return dict(msg)

    async def page(self, version: str, cursor: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        if version == MODERN:
            params["_meta"] = {
                PROTOCOL_VERSION_META_KEY: MODERN,
                CLIENT_INFO_META_KEY: CLIENT,
                CLIENT_CAPABILITIES_META_KEY: {},
            }
        return await self.request("tools/list", params)

    async def pages(self, version: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            reply = await self.page(version, cursor)
            assert "result" in reply, reply
            out.append(reply)
            if (cursor := reply["result"].get("nextCursor")) is None:
                return out


async def _listings(cfg: Path, version: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    async with await anyio.open_process([str(SYMBI), "mcp", "--config", str(cfg)], env=env) as proc:
        rpc = Lines(proc)
        if version != MODERN:
            hello = {"protocolVersion": version, "capabilities": {}, "clientInfo": CLIENT}
            assert "result" in await rpc.request("initialize", hello)
            await rpc.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        pages = await rpc.pages(version)
        forged = await rpc.page(version, "bm90LWEtY3Vyc29y.AAAAAAAAAAAAAAAAAAAAAA")
        assert proc.stdin is not None
        await proc.stdin.aclose()
        return pages, forged


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", MODERN])
@pytest.mark.parametrize("role", ["admin", "developer"])
async def test_every_page_equals_the_sdks(tmp_path: Path, version: str, role: str) -> None:
    fast, sdk = _config(tmp_path / "fast", True, role), _config(tmp_path / "sdk", False, role)
    (got, got_forged), (want, want_forged) = await _listings(fast, version), await _listings(sdk, version)
    assert got == want
    assert_pages_list_the_roles_tools(got, role)
    assert got_forged["error"]["code"] == types.INVALID_PARAMS and got_forged == want_forged
