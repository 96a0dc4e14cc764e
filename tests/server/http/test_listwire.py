"""``tools/list`` answered in wire form (``gateway.server.listwire``) against the SDK's own path.

Two real gateways (the HTTP front in threads) in front of server-everything and the built-in
tools, in pages of 4: one with ``mcp.list_fast_path`` on, one off (every page shaped by the
SDK's runner). They share ``[bus] secret``, so they issue the same cursors for the same
catalogue. Read raw off the wire (handshake-era sessions of three versions, and stateless
2026-07-28 requests), every page with its cursor must be JSON-equal on both, for an admin and
for a developer whom the policy shows two tools. The developer's pages hold none of the
tools the policy hides; an admin's cursor handed to the developer is refused on both.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import types
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

from gateway.server.listwire import ToolListWire
from tests.conftest import EVERYTHING_JS, POLICY, write_config
from tests.server.http.conftest import (
    Keys,
    Running,
    assert_pages_list_the_roles_tools,
    bearer,
    make_keys,
    policy_data,
    run_server,
)

pytestmark = pytest.mark.slow  # two gateways to start

SECRET = base64.b64encode(bytes(range(32))).decode()
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
HANDSHAKE = ("2025-03-26", "2025-06-18", "2025-11-25")
MODERN = "2026-07-28"


Pair = tuple[Running, Running, tuple[Keys, Keys]]


def _config(folder: Path, fast: bool, stdio_role: str = "admin") -> Path:
    folder.mkdir()
    return write_config(
        folder,
        f"""
        [policy]
        path = "{POLICY}"
        data = "{policy_data(folder)}"

        [gateway]
        data_dir = "{folder / "data"}"

        [gateway.stdio_principal]
        roles = ["{stdio_role}"]

        [bus]
        enabled = false
        secret = "{SECRET}"

        [mcp]
        list_page_size = 4
        list_fast_path = {"true" if fast else "false"}

        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("listwire")
    fast_cfg, sdk_cfg = _config(tmp / "fast", True), _config(tmp / "sdk", False)
    # each its own keys for the same principals (a cursor is bound to the principal, not the key)
    keys = make_keys(fast_cfg), make_keys(sdk_cfg)
    with ExitStack() as stack:
        fast = stack.enter_context(run_server(fast_cfg))
        sdk = stack.enter_context(run_server(sdk_cfg))
        yield fast, sdk, keys


def _wire(r: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message of a reply: a JSON body or the data of its SSE event."""
    assert r.status_code in (200, 400), r.text  # 400: a JSON-RPC error as the JSON body
    if r.headers["content-type"].startswith("application/json"):
        return dict(r.json())
    for line in r.text.splitlines():
        if line.startswith("data: ") and line[6:].strip():
            return dict(json.loads(line[6:]))
    raise AssertionError(f"no message in {r.text!r}")


class Lister:
    """Raw ``tools/list`` requests of one principal in one protocol version."""

    def __init__(self, run: Running, key: str, version: str) -> None:
        self.run, self.version = run, version
        self.headers = {**ACCEPT, **bearer(key), "mcp-protocol-version": version}
        if version == MODERN:
            self.headers["mcp-method"] = "tools/list"
        self.client = httpx.Client(timeout=60)
        if version != MODERN:
            self._handshake()

    def _handshake(self) -> None:
        hello = {
            "protocolVersion": self.version,
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello}
        r = self.client.post(
            self.run.mcp, json=init, headers={**self.headers, "mcp-protocol-version": self.version}
        )
        _wire(r)
        self.headers["mcp-session-id"] = r.headers["mcp-session-id"]
        done = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.client.post(self.run.mcp, json=done, headers=self.headers).status_code == 202

    def page(self, cursor: str | None, rid: int = 1) -> dict[str, Any]:
        params: dict[str, Any] = {} if cursor is None else {"cursor": cursor}
        if self.version == MODERN:
            params["_meta"] = {
                PROTOCOL_VERSION_META_KEY: MODERN,
                CLIENT_INFO_META_KEY: {"name": "t", "version": "1"},
                CLIENT_CAPABILITIES_META_KEY: {},
            }
        msg = {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": params}
        return _wire(self.client.post(self.run.mcp, json=msg, headers=self.headers))

    def pages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            reply = self.page(cursor, len(out) + 1)
            assert "result" in reply, reply
            out.append(reply)
            if (cursor := reply["result"].get("nextCursor")) is None:
                return out


def _wire_of(run: Running) -> ToolListWire | None:
    server = run.state.manager.app
    return next((m for m in server.middleware if isinstance(m, ToolListWire)), None)


@pytest.mark.parametrize("version", [*HANDSHAKE, MODERN])
@pytest.mark.parametrize("who", ["admin", "user"])
def test_every_page_equals_the_sdks(pair: Pair, version: str, who: str) -> None:
    fast, sdk, keys = pair
    wire = _wire_of(fast)
    assert wire is not None and _wire_of(sdk) is None
    before = wire.taken
    fk, sk = ((k.admin if who == "admin" else k.user) for k in keys)
    want = Lister(sdk, sk, version).pages()
    got = Lister(fast, fk, version).pages()
    assert wire.taken == before + len(got)  # answered by the wire path, not the SDK's handler
    assert got == want
    assert_pages_list_the_roles_tools(got, who)


@pytest.mark.parametrize("version", ["2025-11-25", MODERN])
def test_another_principals_cursor_is_refused(pair: Pair, version: str) -> None:
    fast, sdk, keys = pair
    answers = []
    for run, k in zip((fast, sdk), keys, strict=True):
        first = Lister(run, k.admin, version).page(None)
        cursor = first["result"]["nextCursor"]
        refused = Lister(run, k.user, version).page(cursor)
        assert refused["error"]["code"] == types.INVALID_PARAMS
        answers.append(refused)
    assert answers[0] == answers[1]
