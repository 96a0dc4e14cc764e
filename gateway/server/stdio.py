"""``symbi mcp``: serve the gateway over stdio (what Claude Desktop launches).

Around the SDK's stdio transport we add what a gateway owes a client that sends bad
input: a line that is not JSON gets a -32700 parse error, a line that is JSON but not
JSON-RPC a -32600, and a message over ``mcp.max_message_bytes`` a -32600 naming the
limit (with the request's id when it can be read), instead of silence. The session
goes on either way.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from gateway.assemble import make_gateway
from gateway.config.model import Config
from gateway.server.front import build_server, init_options

_ID_RE = re.compile(r'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")')


def _error(code: int, message: str, rid: Any = None) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))
    )


def _peek_id(head: str) -> Any:
    m = _ID_RE.search(head)
    if not m:
        return None
    raw = m.group(1)
    return int(raw) if raw[0] != '"' else raw[1:-1]


class _GuardedStdin:
    """Lines from stdin; oversized ones are answered here and never parsed."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._raw = sys.stdin.buffer
        self.write: Any = None
        self.ready = anyio.Event()

    def __aiter__(self) -> "_GuardedStdin":
        return self

    async def __anext__(self) -> str:
        await self.ready.wait()
        while True:
            # readline with a cap: a line longer than the cap is drained in chunks, never held whole
            line = await anyio.to_thread.run_sync(self._raw.readline, self._max + 1)
            if not line:
                raise StopAsyncIteration
            if len(line) <= self._max or line.endswith(b"\n") and len(line) <= self._max + 1:
                return line.decode("utf-8", errors="replace")
            head = line[:512].decode("utf-8", errors="replace")
            total = len(line)
            while not line.endswith(b"\n"):
                line = await anyio.to_thread.run_sync(self._raw.readline, 1 << 20)
                if not line:
                    break
                total += len(line)
            await self.write.send(
                _error(
                    types.INVALID_REQUEST,
                    f"message of {total} bytes exceeds the gateway's limit of {self._max} bytes (mcp.max_message_bytes)",
                    _peek_id(head),
                )
            )


class _AnsweringReader:
    """The SDK's read stream, with transport-level parse failures answered instead of dropped."""

    def __init__(self, inner: Any, write: Any) -> None:
        self._inner = inner
        self._write = write
        self.last_context = None

    def __aiter__(self) -> "_AnsweringReader":
        return self

    async def __anext__(self) -> Any:
        while True:
            item = await self._inner.__anext__()
            self.last_context = getattr(self._inner, "last_context", None)
            if not isinstance(item, Exception):
                return item
            code, msg = types.INVALID_REQUEST, "invalid JSON-RPC message"
            if isinstance(item, ValidationError):
                errs = item.errors()
                if errs and errs[0].get("type") == "json_invalid":
                    code, msg = types.PARSE_ERROR, f"parse error: {errs[0].get('msg')}"
                else:
                    msg = f"invalid JSON-RPC message: {errs[0].get('msg') if errs else item}"
            await self._write.send(_error(code, msg))

    async def receive(self) -> Any:
        return await self.__anext__()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> "_AnsweringReader":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._inner.__aexit__(*exc)

    def close(self) -> None:
        self._inner.close()


async def serve_stdio(config: Config) -> None:
    server = build_server(config, lambda bus: make_gateway(config, bus))
    stdin = _GuardedStdin(config.mcp.max_message_bytes)
    async with stdio_server(stdin=stdin) as (read, write):  # type: ignore[arg-type]
        stdin.write = write
        stdin.ready.set()
        await server.run(_AnsweringReader(read, write), write, init_options(server))  # type: ignore[arg-type]


def run_stdio(config: Config) -> None:
    anyio.run(serve_stdio, config)
