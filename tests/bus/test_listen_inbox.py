"""A 2026-era agent hears of new bus messages on its ``subscriptions/listen`` stream.

The handshake era has ``resources/subscribe`` for ``bus://inbox`` (test_http_bus.py); the
2026-07-28 era has no server push outside a listen stream, so the bus pushes
``notifications/resources/updated`` through the same listen streams the catalogue's list
changes use (gateway/listen.py). Real HTTP on 127.0.0.1, the SDK's 2026 ``Client``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ResourceUpdated

from tests.bus.test_http_bus import bus_config, make_keys
from tests.server.http.conftest import bearer, run_server

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.asynccontextmanager
async def modern(url: str, key: str) -> AsyncIterator[tuple[Client, str]]:
    async with (
        httpx2.AsyncClient(headers=bearer(key), timeout=60) as hc,
        Client(streamable_http_client(url, http_client=hc), mode="2026-07-28") as c,
    ):
        inbox = await c.read_resource("bus://inbox")
        yield c, json.loads(inbox.contents[0].text)["agent"]  # type: ignore[union-attr]


async def _next(sub: Any, timeout: float) -> Any:
    with anyio.move_on_after(timeout):
        return await sub.__anext__()
    return None


async def test_a_bus_message_reaches_the_recipients_listen_stream_only(tmp_path: Path) -> None:
    cfg = bus_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        async with (
            modern(run.mcp, keys["a"]) as (a, _),
            modern(run.mcp, keys["b"]) as (b, b_id),
            modern(run.mcp, keys["out"]) as (out, _),
            b.listen(resource_subscriptions=["bus://inbox"]) as b_sub,
            out.listen(resource_subscriptions=["bus://inbox"]) as out_sub,
        ):
            sent = await a.call_tool("bus__send", {"to": b_id, "body": "ping"})
            assert not sent.is_error, sent
            event = await _next(b_sub, 15)
            assert event == ResourceUpdated(uri="bus://inbox")
            # the outsider listens to its own inbox: Bob's message is not its business
            assert await _next(out_sub, 0.5) is None
            got = await b.call_tool("bus__receive", {})
            assert not got.is_error and "ping" in json.dumps(got.model_dump(mode="json"))
