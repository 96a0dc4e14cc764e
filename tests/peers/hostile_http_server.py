"""A hostile streamable HTTP MCP server (raw Starlette, no SDK server) for red-team tests.

``python hostile_http_server.py PORT [HOST]`` serves ``/mcp`` on HOST (127.0.0.1):PORT. It answers the
handshake and ``tools/list`` (one tool ``t``) normally; ``tools/call`` of ``t`` answers as the
``mode`` argument says:
- ``ok``: a JSON result (``text`` = the ``message`` argument);
- ``given``: the ``message`` argument is the whole result;
- ``drip``: an SSE stream that never answers, only an SSE comment every 0.2 s (a slow drip:
  no read ever times out), open until the client goes away.
The GET stream (server to client) answers as ``$HOSTILE_GET`` says: ``storm`` is an SSE stream
that sets ``retry: 0`` and ends at once (so a client that honours ``retry`` reconnects without
pause), ``flood`` a stream of ``$HOSTILE_FLOOD`` (2000) tools/list_changed notifications at once,
then nothing; anything else 405. ``GET /stats`` (not MCP) answers the counters as JSON: GETs of
``/mcp`` seen, tools/list requests, drip streams open now and in all, every request's ``authorization`` header.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

SESSION = "hostile-session-1"
TOOL = {
    "name": "t",
    "description": "Answers as the mode argument says.",
    "inputSchema": {"type": "object", "properties": {"mode": {"type": "string"}, "message": {}}},
}
STATS: dict[str, Any] = {"gets": 0, "drips_open": 0, "drips": 0, "lists": 0, "authorization": []}
FLOOD = int(os.environ.get("HOSTILE_FLOOD", "2000"))


def _answer(rid: Any, result: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result}, headers={"mcp-session-id": SESSION})


async def _drip() -> AsyncIterator[bytes]:
    STATS["drips_open"] += 1
    STATS["drips"] += 1
    try:
        while True:
            yield b": still thinking\n\n"
            await anyio.sleep(0.2)
    finally:
        STATS["drips_open"] -= 1


async def _flood() -> AsyncIterator[bytes]:
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    yield f"event: message\ndata: {note}\n\n".encode() * FLOOD
    await anyio.sleep_forever()


def _call(rid: Any, args: dict[str, Any]) -> Response:
    if args.get("mode") == "drip":
        return StreamingResponse(_drip(), media_type="text/event-stream", headers={"mcp-session-id": SESSION})
    if args.get("mode") == "given":  # the message argument is the whole result
        return _answer(rid, args.get("message") or {})
    return _answer(rid, {"content": [{"type": "text", "text": str(args.get("message", ""))}]})


async def post(request: Request) -> Response:
    STATS["authorization"].append(request.headers.get("authorization"))
    msg = json.loads(await request.body())
    method, rid = msg.get("method"), msg.get("id")
    if rid is None:
        return Response(status_code=202)
    if method == "initialize":
        return _answer(
            rid,
            {
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "hostile", "version": "1"},
            },
        )
    if method == "tools/list":
        STATS["lists"] += 1
        return _answer(rid, {"tools": [TOOL]})
    if method == "tools/call":
        return _call(rid, msg["params"].get("arguments") or {})
    if method == "ping":
        return _answer(rid, {})
    return JSONResponse(
        {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}},
        headers={"mcp-session-id": SESSION},
    )


async def get(request: Request) -> Response:
    STATS["gets"] += 1
    if os.environ.get("HOSTILE_GET") == "storm":
        return Response(b"retry: 0\n\n", media_type="text/event-stream")
    if os.environ.get("HOSTILE_GET") == "flood":
        return StreamingResponse(_flood(), media_type="text/event-stream")
    return Response(status_code=405)


async def delete(request: Request) -> Response:
    return Response(status_code=200)


async def stats(request: Request) -> Response:
    return JSONResponse(STATS)


app = Starlette(
    routes=[
        Route("/mcp", post, methods=["POST"]),
        Route("/mcp", get, methods=["GET"]),
        Route("/mcp", delete, methods=["DELETE"]),
        Route("/stats", stats, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    uvicorn.run(app, host=host, port=int(sys.argv[1]), log_level="warning")
