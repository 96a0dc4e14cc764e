"""A real TCP peer on 127.0.0.1 that sends back what it reads: what a client connected to
itself (TCP simultaneous open on a freed port in the ephemeral range) reads from "Redis"."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):  # the client closed first
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def echo_redis_url() -> AsyncIterator[str]:
    """A ``redis://`` URL whose peer echoes every command back."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        await server.wait_closed()
