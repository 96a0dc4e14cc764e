"""Upstream list changes reach downstream clients of both eras, filtered per principal.

One gateway (the HTTP front in a thread) in front of two copies of the conformance fixture:
``fxh`` over streamable HTTP with ``protocol = "auto"`` (a 2026-07-28 upstream: its changes
arrive on the gateway's own listen stream) and ``fxs`` over stdio with ``protocol = "legacy"``
(pushed ``notifications/tools/list_changed``). Their ``test_trigger_tool_change`` tool adds or
removes ``test_dynamic_tool``. Alice (admin) sees every tool; Bob may call the trigger tools
but not the dynamic one, so a change of it is none of his business.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.subscriptions import ToolsListChanged

from tests.conformance.test_conformance import FIXTURE, _wait_port
from tests.conftest import POLICY, free_port, write_config
from tests.server.http.conftest import Running, bearer, roles_policy_data, run_server

pytestmark = [pytest.mark.anyio]

TRIGGERS = ["fxh__test_trigger_tool_change", "fxs__test_trigger_tool_change"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def fixture_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("fxh") / "fixture.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(FIXTURE), "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_port(port, proc, log)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, fixture_http: str
) -> Iterator[tuple[Running, dict[str, str]]]:
    from gateway.config import load_config
    from gateway.server.auth import ApiKeyStore

    tmp = tmp_path_factory.mktemp("listchanged")
    roles = {
        "admin": {"tools": ["*"], "resources": ["**"], "prompts": ["**"]},
        "narrow": {"tools": TRIGGERS, "resources": [], "prompts": []},
    }
    roles_policy_data(tmp, roles, ("fxh", "fxs"))
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

        [servers.fxh]
        url = "{fixture_http}"
        verification = "warn"
        protocol = "auto"

        [servers.fxs]
        command = "{sys.executable}"
        args = ["{FIXTURE}", "--stdio"]
        verification = "warn"
        protocol = "legacy"
        """,
    )
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    keys = {"alice": store.create("alice", ("admin",))[0], "bob": store.create("bob", ("narrow",))[0]}
    with run_server(cfg) as run:
        yield run, keys


class Legacy:
    """A 2025-11-25 session that records the list_changed notifications it is pushed."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.arrived = anyio.Event()

    async def handler(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.seen.append(message.method)
            self.arrived.set()


async def _legacy(run: Running, key: str, stack: Any) -> tuple[ClientSession, Legacy]:
    rec = Legacy()
    hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(key), timeout=30))
    r, w = await stack.enter_async_context(streamable_http_client(run.mcp, http_client=hc))
    s = await stack.enter_async_context(ClientSession(r, w, message_handler=rec.handler))
    await s.initialize()
    await s.list_tools()
    return s, rec


async def _modern(run: Running, key: str, stack: Any) -> Client:
    hc = await stack.enter_async_context(httpx2.AsyncClient(headers=bearer(key), timeout=30))
    c: Client = await stack.enter_async_context(
        Client(streamable_http_client(run.mcp, http_client=hc), mode="2026-07-28")
    )
    assert c.protocol_version == "2026-07-28"
    return c


async def _next_event(sub: AsyncIterator[Any], timeout: float) -> Any:
    with anyio.move_on_after(timeout):
        return await sub.__anext__()
    return None


@pytest.mark.parametrize("trigger", TRIGGERS, ids=["http-2026-upstream", "stdio-2025-upstream"])
async def test_a_change_reaches_listen_streams_and_legacy_sessions_that_can_see_it(
    gw: tuple[Running, dict[str, str]], trigger: str
) -> None:
    import contextlib

    run, keys = gw
    async with contextlib.AsyncExitStack() as stack:
        alice = await _modern(run, keys["alice"], stack)
        bob = await _modern(run, keys["bob"], stack)
        _, alice_legacy = await _legacy(run, keys["alice"], stack)
        _, bob_legacy = await _legacy(run, keys["bob"], stack)
        alice_sub = await stack.enter_async_context(alice.listen(tools_list_changed=True))
        bob_sub = await stack.enter_async_context(bob.listen(tools_list_changed=True))

        started = time.perf_counter()
        res = await bob.call_tool(trigger, {})  # Bob may pull the trigger, not see what it changes
        assert not res.is_error, res
        event = await _next_event(alice_sub, 10)
        took = time.perf_counter() - started
        assert isinstance(event, ToolsListChanged)
        with anyio.move_on_after(10):
            await alice_legacy.arrived.wait()
        assert alice_legacy.seen == ["notifications/tools/list_changed"]
        names = {t.name for t in (await alice.list_tools()).tools}
        assert trigger.replace("test_trigger_tool_change", "test_dynamic_tool") in names or len(names) > 2
        # The announcement went out to every stream in one pass: Bob's would be queued by now.
        assert await _next_event(bob_sub, 0.5) is None
        assert bob_legacy.seen == []
        # on the record: whom the gateway told, whom not, and how long after the upstream's notice
        note = _last_notice(run)
        assert "tools" in note["kinds"] and "key:alice" in note["told"] and "key:bob" in note["not_told"]
        print(
            f"\n{trigger}: upstream notice to pushes queued {note['after_ms']} ms; "
            f"call start to listen-stream event {took * 1000:.0f} ms"
        )


def _last_notice(run: Running) -> dict[str, Any]:
    gateway = run.state.gateway
    assert gateway is not None and gateway.audit is not None
    gateway.audit.flush(timeout=5)
    for event in reversed(gateway.audit.recent(50)):
        if event["type"] == "notify.list_changed":
            return dict(event["details"])
    raise AssertionError("no notify.list_changed event in the audit log")
