"""The soak benchmark's upstream (in its own folder: bench/http.py would shadow the stdlib
``http`` for a script run from bench/): a real MCP server (SDK ``MCPServer``, stdio).

- ``echo(message)``: returns ``Echo: <message>``;
- ``churn()``: adds the tool ``extra`` if it is absent, removes it if present, and announces
  the change (``notifications/tools/list_changed``), so the gateway re-lists, re-verifies and
  rebuilds its catalogue while calls keep flowing.
"""

from __future__ import annotations

import contextlib

from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("soak-upstream", version="1.0")
_state = {"extra": False}


@mcp.tool()
def echo(message: str) -> str:
    """Echo the message back."""
    return f"Echo: {message}"


def extra() -> str:
    return "extra!"


@mcp.tool()
async def churn(ctx: Context) -> str:
    """Toggle the tool ``extra`` and announce the new tool list."""
    if _state["extra"]:
        mcp.remove_tool("extra")
    else:
        mcp.add_tool(extra, name="extra", description="A tool that comes and goes.")
    _state["extra"] = not _state["extra"]
    await ctx.notify_tools_changed()
    with contextlib.suppress(Exception):  # 2026-era sessions have no push channel
        await ctx.request_context.session.send_tool_list_changed()
    return "added" if _state["extra"] else "removed"


if __name__ == "__main__":
    mcp.run()
