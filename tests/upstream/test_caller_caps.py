"""The caller's capabilities on every request an upstream session sends, while that caller's
call runs: a real in-process MCP ``Server`` and the SDK ``Client`` (as in tests/test_compat.py),
the caller a weak-referenced stand-in holding only ``client_capabilities``."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from mcp import Client, types
from mcp.server import Server, ServerRequestContext

from gateway.upstream.caller_caps import DOWNSTREAM_CAPABILITIES, downstream_ref, forward_caller_capabilities

pytestmark = pytest.mark.anyio

KEY = "io.modelcontextprotocol/clientCapabilities"


class _Caller:  # what the stamp reads of the caller's ServerSession
    def __init__(self, caps: types.ClientCapabilities | None) -> None:
        self.client_capabilities = caps


def _server(seen: list[dict[str, Any]]) -> Server[Any]:
    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> Any:
        seen.append(dict(params.meta or {}) if params is not None and params.meta is not None else {})
        return types.ListToolsResult(tools=[])

    return Server("caller-caps-test", on_list_tools=list_tools)


async def _list_as(client: Client, caller: Any) -> None:
    token = DOWNSTREAM_CAPABILITIES.set(downstream_ref(caller))
    try:
        await client.list_tools()
    finally:
        DOWNSTREAM_CAPABILITIES.reset(token)


async def test_a_request_carries_its_callers_capabilities_and_no_one_elses() -> None:
    seen: list[dict[str, Any]] = []
    sampler = _Caller(types.ClientCapabilities(sampling=types.SamplingCapability()))
    async with Client(_server(seen), mode="legacy") as client:
        forward_caller_capabilities(client.session)
        await _list_as(client, sampler)
        await _list_as(client, _Caller(types.ClientCapabilities()))
        await client.list_tools()  # no caller: the gateway's own request
        await _list_as(client, _Caller(None))  # a caller that declared nothing
    assert seen[0][KEY] == {"sampling": {}}
    assert seen[1][KEY] == {}
    assert KEY not in seen[2] and KEY not in seen[3]


async def test_a_caller_that_is_gone_is_not_kept_alive_nor_stamped() -> None:
    seen: list[dict[str, Any]] = []
    caller: Any = _Caller(types.ClientCapabilities(sampling=types.SamplingCapability()))
    ref = downstream_ref(caller)
    assert ref() is caller and downstream_ref(None) is None
    del caller
    gc.collect()
    async with Client(_server(seen), mode="legacy") as client:
        forward_caller_capabilities(client.session)
        token = DOWNSTREAM_CAPABILITIES.set(ref)
        try:
            await client.list_tools()
        finally:
            DOWNSTREAM_CAPABILITIES.reset(token)
    assert ref() is None and KEY not in seen[0]
