"""A hostile streamable HTTP MCP server (raw Starlette, no SDK server) for red-team tests.

``python hostile_http_server.py PORT [HOST]`` serves ``/mcp`` on HOST (127.0.0.1):PORT. It answers the
handshake and ``tools/list`` (one tool ``t``) normally; ``tools/call`` of ``t`` answers as the
``mode`` argument says:
- ``ok``: a JSON result (``text`` = the ``message`` argument);
- ``given``: the ``message`` argument is the whole result;
- ``drip``: an SSE stream that never answers, only an SSE comment every 0.2 s (a slow drip:
  no read ever times out), open until the client goes away;
- ``progress``: an SSE stream of ``$HOSTILE_FLOOD`` progress notifications for the call's
  progress token (progress 1, 2, 3, ...), then the answer;
- ``endless``: an SSE event whose ``data:`` line never ends (1 KB every 10 ms, no newline);
- ``redirect``: the ``status`` argument (302) to ``$HOSTILE_REDIRECT``;
- ``forget``: ``404`` (the server forgets every session, as a restarted one does), and every
  request naming an older session after it gets ``404`` too.
Sessions: each ``initialize`` gets a new ``mcp-session-id`` (``hostile-session-N``); a request
naming another session than the newest gets ``404``. ``$HOSTILE_SESSION`` = ``rotate``: every
answer carries a fresh session id (a server changing it mid-session); ``expire``: every call and
GET gets ``404`` (a 404 loop). ``$HOSTILE_INIT`` = ``drip``: ``initialize`` is answered by the
drip above (an answer that never comes).
The GET stream (server to client) answers as ``$HOSTILE_GET`` says: ``storm`` is an SSE stream
that sets ``retry: 0`` and ends at once (so a client that honours ``retry`` reconnects without
pause), ``flood`` a stream of ``$HOSTILE_FLOOD`` (2000) tools/list_changed notifications at once,
then nothing, ``flaky`` 500 to the first three GETs (a server down for a while), then a stream of
one tools/list_changed, ``redirect`` 302 to ``$HOSTILE_REDIRECT``, ``notfound`` 404 (no GET
route, the session still known); anything else 405.
``GET /stats`` (not MCP) answers the counters as JSON: GETs of ``/mcp`` seen, tools/list requests, initialize requests, 404s sent, drip streams open now and
in all, progress notifications sent, every POST's ``authorization`` and ``mcp-session-id``.
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

TOOL = {
    "name": "t",
    "description": "Answers as the mode argument says.",
    "inputSchema": {"type": "object", "properties": {"mode": {"type": "string"}, "message": {}}},
}
STATS: dict[str, Any] = {
    "gets": 0,
    "drips_open": 0,
    "drips": 0,
    "lists": 0,
    "inits": 0,
    "not_found": 0,
    "progress": 0,
    "authorization": [],
    "sessions_named": [],
}
FLOOD = int(os.environ.get("HOSTILE_FLOOD", "2000"))
REDIRECT = os.environ.get("HOSTILE_REDIRECT", "http://127.0.0.1:9/mcp")


def _session() -> str:
    if os.environ.get("HOSTILE_SESSION") == "rotate":  # a fresh id on every answer
        STATS["rotated"] = STATS.get("rotated", 0) + 1
        return f"hostile-rotated-{STATS['rotated']}"
    return f"hostile-session-{STATS['inits']}"


def _headers() -> dict[str, str]:
    return {"mcp-session-id": _session()}


def _answer(rid: Any, result: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"jsonrpc": "2.0", "id": rid, "result": result}, headers=_headers())


def _not_found() -> Response:
    STATS["not_found"] += 1
    return Response(status_code=404)


async def _drip() -> AsyncIterator[bytes]:
    STATS["drips_open"] += 1
    STATS["drips"] += 1
    try:
        while True:
            yield b": still thinking\n\n"
            await anyio.sleep(0.2)
    finally:
        STATS["drips_open"] -= 1


async def _progress(rid: Any, token: Any) -> AsyncIterator[bytes]:
    def note(n: int) -> bytes:
        params = {"progressToken": token, "progress": n}
        body = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress", "params": params})
        return f"event: message\ndata: {body}\n\n".encode()

    for start in range(1, FLOOD + 1, 100):
        yield b"".join(note(n) for n in range(start, min(start + 100, FLOOD + 1)))
        STATS["progress"] = min(start + 99, FLOOD)
    answer = {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "done"}]}}
    yield f"event: message\ndata: {json.dumps(answer)}\n\n".encode()


async def _endless() -> AsyncIterator[bytes]:
    yield b"event: message\ndata: "
    while True:
        yield b"x" * 1024
        await anyio.sleep(0.01)


async def _flood(count: int = FLOOD) -> AsyncIterator[bytes]:
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    yield f"event: message\ndata: {note}\n\n".encode() * count
    await anyio.sleep_forever()


def _call(rid: Any, params: dict[str, Any]) -> Response:
    args = params.get("arguments") or {}
    if args.get("mode") == "drip":
        return StreamingResponse(_drip(), media_type="text/event-stream", headers=_headers())
    if args.get("mode") == "progress":
        token = (params.get("_meta") or {}).get("progressToken")
        return StreamingResponse(_progress(rid, token), media_type="text/event-stream", headers=_headers())
    if args.get("mode") == "endless":
        return StreamingResponse(_endless(), media_type="text/event-stream", headers=_headers())
    if args.get("mode") == "redirect":  # to $HOSTILE_REDIRECT, with the status asked for
        return Response(
            status_code=int(args.get("status", 302)), headers={"location": REDIRECT, **_headers()}
        )
    if args.get("mode") == "forget":
        STATS["forgotten"] = STATS["inits"]
        return _not_found()
    if args.get("mode") == "given":  # the message argument is the whole result
        return _answer(rid, args.get("message") or {})
    return _answer(rid, {"content": [{"type": "text", "text": str(args.get("message", ""))}]})


async def post(request: Request) -> Response:
    STATS["authorization"].append(request.headers.get("authorization"))
    STATS["sessions_named"].append(request.headers.get("mcp-session-id"))
    msg = json.loads(await request.body())
    method, rid = msg.get("method"), msg.get("id")
    if method != "initialize" and _stale(request, method):
        return _not_found()
    if rid is None:
        return Response(status_code=202)
    if method == "initialize":
        STATS["inits"] += 1
        if os.environ.get("HOSTILE_INIT") == "drip":
            return StreamingResponse(_drip(), media_type="text/event-stream", headers=_headers())
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
        return _call(rid, msg["params"])
    if method == "ping":
        return _answer(rid, {})
    return JSONResponse(
        {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}},
        headers=_headers(),
    )


def _stale(request: Request, method: str | None) -> bool:
    """Whether a request names a session this server no longer knows (404 is the answer)."""
    if os.environ.get("HOSTILE_SESSION") == "expire":  # up, then every call and GET: 404
        return method in ("tools/call", None)
    if os.environ.get("HOSTILE_SESSION") == "rotate":
        return False
    named = request.headers.get("mcp-session-id")
    return named != f"hostile-session-{STATS['inits']}" or STATS.get("forgotten") == STATS["inits"]


async def get(request: Request) -> Response:
    STATS["gets"] += 1
    if _stale(request, None):
        return _not_found()
    if os.environ.get("HOSTILE_GET") == "notfound":  # a route for POST only, as many servers have
        return Response(status_code=404)
    if os.environ.get("HOSTILE_GET") == "storm":
        return Response(b"retry: 0\n\n", media_type="text/event-stream")
    if os.environ.get("HOSTILE_GET") == "redirect":
        return Response(status_code=302, headers={"location": REDIRECT})
    if os.environ.get("HOSTILE_GET") == "flaky" and STATS["gets"] <= 3:  # down for a while
        return Response(status_code=500)
    if os.environ.get("HOSTILE_GET") == "flaky":  # back: one list_changed, then open
        return StreamingResponse(_flood(1), media_type="text/event-stream")
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
