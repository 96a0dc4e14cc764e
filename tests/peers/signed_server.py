"""A real MCP server (SDK low-level ``Server``, stdio) serving tool definitions from a file.

``$TOOLS_FILE`` holds a JSON list of wire tool definitions, e.g. with in-band SchemaPin
signatures in ``_meta["schemapin/signature"]``. It is re-read on every tools/list, and the
``reload`` tool announces a change (list_changed), so a test can swap definitions or
signatures under a running gateway. ``$PROMPTS_FILE`` (optional) holds prompt definitions and
``$RESOURCES_FILE`` (optional) resource definitions, served the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import mcp.types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.stdio import stdio_server

TOOLS = Path(os.environ["TOOLS_FILE"])
RELOAD = types.Tool(
    name="reload", description="Announce that the tools changed.", input_schema={"type": "object"}
)


def load() -> list[types.Tool]:
    return [types.Tool.model_validate(t) for t in json.loads(TOOLS.read_text())]


async def list_tools(
    ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[*load(), RELOAD])


async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "reload":
        await ctx.session.send_tool_list_changed()
        return types.CallToolResult(content=[types.TextContent(type="text", text="reloaded")])
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"ok {params.name}")])


def _extra(var: str) -> list[dict[str, object]]:
    path = os.environ.get(var)
    return json.loads(Path(path).read_text()) if path else []


async def list_prompts(
    ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=[types.Prompt.model_validate(p) for p in _extra("PROMPTS_FILE")])


async def list_resources(
    ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
) -> types.ListResourcesResult:
    return types.ListResourcesResult(
        resources=[types.Resource.model_validate(r) for r in _extra("RESOURCES_FILE")]
    )


async def list_templates(
    ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[])


prompts, resources = bool(os.environ.get("PROMPTS_FILE")), bool(os.environ.get("RESOURCES_FILE"))
server = Server(
    "signed-test-server",
    version="1.0",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_prompts=list_prompts if prompts else None,
    on_list_resources=list_resources if resources else None,
    on_list_resource_templates=list_templates if resources else None,
)


async def main() -> None:
    async with stdio_server() as (r, w):
        await server.run(r, w, server.create_initialization_options(NotificationOptions(tools_changed=True)))


if __name__ == "__main__":
    anyio.run(main)
