"""The HTTP front's middleware chain as one ASGI layer, and its one-frame path for the request
that dominates: a POST to the MCP endpoint naming its session (every ``tools/call``).

The chain, outermost first (``gateway.server.http``'s order): access log → Host/Origin guard →
body deadline → the SDK's request body limit → authentication → per-principal session quota →
connection limit → (Starlette's exception middleware → router →) the MCP endpoint's session
scope → the HTTP lane. Every request but that POST goes through the chain, each check its own
ASGI wrapper. That POST runs the same checks, in the same order, with the same refusals and
the same shared state (the connection limit's count, the access log's counters), in one
coroutine: each wrapper was a frame every resumption of the request's task passed through,
and the body was read three times (deadline, limit, lane).

What the POST skips is what does nothing for it: the session quota counts only requests that
open a session (no ``mcp-session-id``: ``SessionQuota._opens_session``); the exception
middleware turns only an ``HTTPException`` into a response (neither the SDK's endpoint nor the
lane raises one; any other error reaches Starlette's server-error middleware either way); the
router's match is this path and method (its scope keys are set as it sets them); the session
scope watches only a DELETE's or an initialize's response (``SessionScope``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import RequestBodyLimitMiddleware, TransportSecuritySettings
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.server.httplane import HttpLane
from gateway.server.limits import ConnectionLimit
from gateway.server.middleware import (
    AccessLog,
    AuthGate,
    HostGuard,
    access_token,
    protected_area,
    stream_owner,
)
from gateway.server.principals import scope_headers
from gateway.server.resume import STREAM_OWNER, StreamOwner
from gateway.server.sessions import BodyDeadline, SessionQuota

if TYPE_CHECKING:
    from gateway.server.http import HttpState


@dataclass(frozen=True)
class McpEndpoint:
    """The MCP route and what it serves (the lane behind its ``SessionScope``), for the POST
    path; the router sets ``router`` and ``route`` in the scope, the POST path does so too."""

    route: Route
    lane: HttpLane
    router: Router


class HttpFront:
    """ASGI middleware: the chain (``app`` is its outermost wrapper) plus the session POST path.

    ``mcp`` is None when the MCP path is an operations route's (that route keeps it): then every
    request takes the chain."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        state: HttpState,
        manager: StreamableHTTPSessionManager,
        settings: TransportSecuritySettings,
        mcp: McpEndpoint | None,
    ) -> None:
        config = state.config
        # only authenticated MCP connections within their principal's quota take a slot
        self.limit = ConnectionLimit(app, path=config.http.path, limit=config.mcp.max_concurrent_connections)
        quota = SessionQuota(
            self.limit,
            manager=manager,
            limit=config.http.max_sessions_per_principal,
            client_id=lambda p: access_token(p).client_id,
            path=config.http.path,
        )
        self.max_bytes = config.http.max_request_bytes
        body_limit = RequestBodyLimitMiddleware(quota, max_body_size=self.max_bytes)
        # outside the limit (which buffers the body itself): the deadline covers the whole read
        self.deadline = BodyDeadline(
            body_limit,
            timeout=config.http.body_timeout_s,
            max_bytes=self.max_bytes,
            large_paths=lambda path: protected_area(path, config.http.path) is not None,
        )
        # before any body is read: an unauthenticated request is refused off its headers (its
        # body buffered first, 200 connections sending 4 MB each took the gateway to +300 MB)
        self.auth = AuthGate(self.deadline, state=state)
        self.host = HostGuard(self.auth, settings=settings)
        self.log = AccessLog(self.host, state=state)
        self.app: ASGIApp = self.log
        self.path = config.http.path
        self.mcp = mcp
        self.taken = 0  # requests that took the session POST path (tests)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """A plain function (so is ``_session_post``): no frame of their own that every
        resumption of the request's task passes through."""
        mcp = self.mcp
        if (
            mcp is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == self.path
            and not scope.get("root_path")  # the router would match the path without it
            and "mcp-session-id" in (headers := scope_headers(scope))
        ):
            return self._session_post(mcp, scope, headers, receive, send)
        return self.app(scope, receive, send)

    def _session_post(
        self, mcp: McpEndpoint, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> Awaitable[None]:
        """The access log's part (the status read off the response, the request counted)
        around the checks."""
        self.taken += 1
        return self.log.logged(
            scope, send, lambda watched: self._serve(mcp, scope, headers, receive, watched)
        )

    async def _serve(
        self, mcp: McpEndpoint, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        body = await self._checked(scope, headers, receive, send)
        if body is None:
            return
        limit = self.limit  # the connection limit's slot, held while the endpoint runs
        limit.open += 1
        try:
            token = STREAM_OWNER.set(_routed(scope, headers, mcp))
            try:
                await mcp.lane.post(scope, body, receive, send)
            finally:
                STREAM_OWNER.reset(token)
        finally:
            limit.open -= 1

    async def _checked(
        self, scope: Scope, headers: dict[str, str], receive: Receive, send: Send
    ) -> bytes | None:
        """The chain's checks, in its order (the Host, the credentials, then the body, read once
        within its deadline): the body when they pass and a slot is
        free, else None (the refusal sent, or the client gone)."""
        refusal = self.host.refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return None
        if not await self.auth.admit(scope, receive, send, "mcp"):
            return None
        body = await self.deadline.read(scope, receive, send)
        if body is None:
            return None
        if _declared_too_large(headers, self.max_bytes):
            await Response("Request body too large", status_code=413)(scope, receive, send)
            return None
        # the session quota: a request naming its session opens none (nothing to count)
        if self.limit.open >= self.limit.limit:
            await self.limit.refuse(scope, receive, send)
            return None
        return body


def _routed(scope: Scope, headers: dict[str, str], mcp: McpEndpoint) -> StreamOwner:
    """The scope as the router leaves it (its keys), and whose stream the request is
    (``SessionScope``'s ``STREAM_OWNER``)."""
    if "router" not in scope:
        scope["router"] = mcp.router
    scope["route"] = mcp.route
    scope["endpoint"] = mcp.route.endpoint
    scope["path_params"] = dict(scope.get("path_params", {}))
    return stream_owner(scope, headers.get("mcp-session-id"))


def _declared_too_large(headers: dict[str, str], max_bytes: int) -> bool:
    """The SDK's ``RequestBodyLimitMiddleware`` test of the declared size (its test of the body
    read is the deadline's, at the same bound): a Content-Length beyond the limit."""
    declared = headers.get("content-length")
    if declared is None:
        return False
    try:
        return int(declared) > max_bytes
    except ValueError:
        return False
