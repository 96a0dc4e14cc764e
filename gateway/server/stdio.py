"""``symbi mcp``: serve the gateway over stdio (what Claude Desktop launches)."""

from __future__ import annotations

import anyio
from mcp.server.stdio import stdio_server

from gateway.assemble import make_gateway
from gateway.config.model import Config
from gateway.server.front import build_server, init_options


async def serve_stdio(config: Config) -> None:
    server = build_server(config, lambda bus: make_gateway(config, bus))
    async with stdio_server() as (read, write):
        await server.run(read, write, init_options(server))


def run_stdio(config: Config) -> None:
    anyio.run(serve_stdio, config)
