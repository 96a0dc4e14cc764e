"""The real definitions of server-everything, server-filesystem and mcp-server-time (real
processes, listed with the SDK client) screen clean: no finding above low."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from gateway.screen import screen_definition
from tests.conftest import EVERYTHING_JS, FILESYSTEM_JS, TIME_BIN, require_peers

pytestmark = [pytest.mark.anyio, pytest.mark.npm]


async def definitions(command: str, args: list[str]) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    out: list[tuple[str, dict]] = []  # type: ignore[type-arg]
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(
            stdio_client(StdioServerParameters(command=command, args=args))
        )
        s = await stack.enter_async_context(ClientSession(read, write))
        init = await s.initialize()
        out += [
            ("tool", t.model_dump(mode="json", by_alias=True, exclude_none=True))
            for t in (await s.list_tools()).tools
        ]
        if init.capabilities.resources:
            out += [
                ("resource", r.model_dump(mode="json", by_alias=True, exclude_none=True))
                for r in (await s.list_resources()).resources
            ]
            out += [
                ("resource", r.model_dump(mode="json", by_alias=True, exclude_none=True))
                for r in (await s.list_resource_templates()).resource_templates
            ]
        if init.capabilities.prompts:
            out += [
                ("prompt", p.model_dump(mode="json", by_alias=True, exclude_none=True))
                for p in (await s.list_prompts()).prompts
            ]
    return out


async def test_reference_servers_have_no_finding_above_low(tmp_path: Path) -> None:
    require_peers()
    defs = (
        await definitions("node", [str(EVERYTHING_JS), "stdio"])
        + await definitions("node", [str(FILESYSTEM_JS), str(tmp_path)])
        + await definitions(str(TIME_BIN), [])
    )
    assert len(defs) > 30
    names = {d["name"] for _, d in defs if "name" in d}
    bad = {}
    for kind, d in defs:
        found = screen_definition(kind, d, others=names - {d.get("name")}).at_least("medium")  # type: ignore[arg-type]
        if found:
            bad[d.get("name")] = [f.as_dict() for f in found]
    assert bad == {}
