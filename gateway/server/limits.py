"""``mcp.max_concurrent_connections``: how many MCP requests the HTTP front serves at once.

Counted: every open POST / DELETE to the MCP endpoint, for as long as its JSON or SSE answer
streams (an HTTP/1.1 client holds one TCP connection per such request). Not counted: each
session's GET listen stream, which is idle by design and bounded by ``http.max_sessions``
(one per session). Beyond the limit a request is refused at once with HTTP 503,
``Retry-After`` and a JSON-RPC error whose ``data.code`` is ``too_many_connections`` naming
the setting, instead of piling up on the upstreams. Over stdio a gateway process serves one
connection, which every valid limit (>= 1) admits.
"""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import TooManyConnections

_logger = logging.getLogger("symbi.http")


class ConnectionLimit:
    """ASGI middleware counting open requests to ``path``; refuses beyond ``limit``."""

    def __init__(self, app: ASGIApp, *, path: str, limit: int) -> None:
        self.app = app
        self.path = path.rstrip("/") or "/"
        self.limit = limit
        self.open = 0  # one event loop: plain int is safe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") == "GET"
            or (scope.get("path", "").rstrip("/") or "/") != self.path
        ):
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            await self.refuse(scope, receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The answer beyond the limit: 503, ``Retry-After`` and a typed JSON-RPC error."""
        err = TooManyConnections(
            f"too many concurrent MCP connections: {self.limit} open "
            f"(mcp.max_concurrent_connections = {self.limit}); retry shortly"
        )
        _logger.warning("%s", err.message)
        body = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32000, "message": err.message, "data": {"code": err.code}},
        }
        await JSONResponse(body, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)
