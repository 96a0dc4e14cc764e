"""The growth benchmark's upstream: a real MCP server (SDK ``MCPServer``, stdio) with many tools.

    python bench/peers/growth_upstream.py --name up7 --tools 40

- ``tool_00`` .. ``tool_NN`` (``--tools`` minus two of them): each takes ``message`` and
  returns ``<server>/<tool>: <message>``; descriptions differ per server and tool, so the
  gateway pins, screens and lists distinct definitions;
- ``extra()``: present at start (so ``tofu`` pins it with the first listing);
- ``churn()``: removes the tool ``extra`` if present, adds it back (the same definition) if
  absent, and announces the change (``notifications/tools/list_changed``), so the gateway
  re-lists, re-verifies and rebuilds its catalogue. (A tool that was not in the first listing
  would stay blocked until a person approves it, and a client would never see it appear.)
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable

from mcp.server.mcpserver import Context, MCPServer

_state = {"extra": True}


def _echo_tool(server: str, tool: str) -> Callable[[str], str]:
    def echo(message: str) -> str:
        return f"{server}/{tool}: {message}"

    return echo


def extra() -> str:
    return "extra!"


def build(name: str, tools: int) -> MCPServer:
    mcp = MCPServer(f"growth-{name}", version="1.0")
    for i in range(tools - 2):  # plus churn and extra: ``tools`` in all
        tool = f"tool_{i:02d}"
        mcp.add_tool(
            _echo_tool(name, tool),
            name=tool,
            description=f"Tool {i} of server {name}: returns the message, prefixed with its own name.",
        )
    mcp.add_tool(extra, name="extra", description="A tool that comes and goes.")

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

    return mcp


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", default="up")
    ap.add_argument("--tools", type=int, default=40)
    a = ap.parse_args()
    build(a.name, a.tools).run()
