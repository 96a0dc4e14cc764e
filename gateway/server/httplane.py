"""The client-facing fast lane of ``tools/call`` on the streamable-HTTP front.

The stdio lane's HTTP sibling (``gateway.server.fastlane``, whose ``plain_call``, ``run_call``
and ``LaneDispatch`` it reuses): a POST carrying one plain ``tools/call`` of an established
handshake-era session is parsed with orjson and answered here, through the SAME handler and
server middleware (the SDK's SERVER span, whose trace id goes on the audit record) with the
session's real ``Connection``, the HTTP request on the context (the principal, the session id
the audit records), answered as the SDK's transport answers it in the session's mode:

* SSE (the default): an event stream with the SDK's headers, priming event and event ids
  (``gateway.server.httpsse``): the call's progress and the relay's sampling/elicitation ride
  the request's stream through the session's router, as on the SDK's path, and the response
  is stored in the event store (a client resuming with ``Last-Event-ID`` gets it replayed).
* ``http.json_response``: a JSON body, where the SDK drops the call's notifications and refuses
  server->client requests with ``NoBackChannelError``; so does ``JsonLaneDispatch``.

The lane takes a request only when every check the SDK's path makes passes the same way: the
session id is open and was opened by this credential (the manager's own owner test), the
session answered ``initialize``, the protocol-version header is a handshake-era one,
Accept/Content-Type/Host/Origin pass the transport's checks. Everything else goes to the SDK
unchanged, its body replayed: other methods, GET/DELETE, batches, notifications, responses,
malformed or unusual messages. A request (any method, either path) whose id is in flight in its
session is refused with Invalid Request, its id echoed (HTTP 400): MCP forbids a requestor to
reuse an id within a session, and the SDK's transport routes answers by id (a second request
of the id takes the first's stream: one answer lost, or given to the wrong request). With
``mcp.http_fast_lane`` off the wrapper still stands in front of the SDK for that refusal alone
(``serve_calls=False``). A
``notifications/cancelled`` for a lane call of the same session cancels it (and still goes to
the SDK), answered ``REQUEST_CANCELLED`` as the SDK's 2025-era wire does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import Any

import anyio
import orjson
from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import (
    AuthenticatedUser,
    AuthorizationContext,
    authorization_context,
)
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult
from mcp.server.streamable_http import REQUEST_CANCELLED, check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.dispatcher import CallOptions, coerce_request_id
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.transport_context import TransportContext
from mcp_types import DEFAULT_NEGOTIATED_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.compat import (
    HOLD_HELD,
    HOLD_REFUSED,
    asyncio_cancel_scope,
    connection_of,
    http_session_transport,
    open_http_sessions,
    transport_admits,
    transport_hold,
    transport_release,
    transport_serving,
)
from gateway.server.fastlane import (
    LaneDispatch,
    MiddlewareChain,
    cancelled_id,
    inexact,
    plain_call,
    run_call,
)
from gateway.server.httpsse import HOLD_S, SseAnswer, SseLaneDispatch, sse_headers
from gateway.server.httpwire import json_content, read_body, replaying, request_id, reused, send_json
from gateway.server.principals import scope_headers
from gateway.server.resume import BoundedEventStore

_logger = logging.getLogger("symbi.server.httplane")

_JSON_TRANSPORT = TransportContext(kind="jsonrpc", can_send_request=False)  # what the SDK stamps in JSON mode
_ADMITS_KEPT = 256  # distinct passing combinations remembered (clients send the same few)
_REQUESTORS_KEPT = 1024  # SDK users whose authorization context is kept (HttpLane._requestor)


class JsonLaneDispatch(LaneDispatch):
    """The ``DispatchContext`` of a lane call in JSON-reply mode: as the SDK's, no back channel
    (a server->client request raises ``NoBackChannelError``) and the call's notifications have
    no wire (dropped, as the SDK's message router drops them); the HTTP request is the
    message metadata (``ctx.request``)."""

    transport = _JSON_TRANSPORT

    def __init__(self, connection: Connection, request_id: types.RequestId, request: Request) -> None:
        super().__init__(connection, request_id, None)
        self.request = request
        self.message_metadata = ServerMessageMetadata(request_context=request, can_send_request=False)  # type: ignore[assignment]

    @property
    def can_send_request(self) -> bool:
        return False

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        _logger.debug("dropped %s: a JSON reply carries only the response", method)


class HttpLane:
    """ASGI wrapper of the SDK's MCP endpoint; ``capture`` goes into ``Server.middleware``."""

    def __init__(
        self,
        app: ASGIApp,
        server: Server[Any],
        manager: StreamableHTTPSessionManager,
        serve_calls: bool = True,
    ) -> None:
        self.app = app
        self._serve_calls = serve_calls  # False: only the refusal of ids in flight (the lane off)
        self._server = server
        self._chain = MiddlewareChain(server)
        self._manager = manager
        # the sessions' event store when it is ours: a lane answer is stored as a LaneResult
        store = manager.event_store
        self._store = store if isinstance(store, BoundedEventStore) else None
        self._state: Any = None
        self._connections: dict[str, Connection] = {}
        self._headers: dict[str, list[tuple[bytes, bytes]]] = {}  # each session's SSE answer headers
        self._in_flight: dict[tuple[str, types.RequestId], tuple[anyio.CancelScope, LaneDispatch]] = {}
        # the requests of known sessions the SDK serves, while their POST runs
        self._sdk_posts: set[tuple[str, types.RequestId]] = set()
        self._admits: set[tuple[bool | str | None, ...]] = set()  # header values that passed (_admitted)
        self._requestors: dict[AuthenticatedUser, AuthorizationContext] = {}
        self.taken = 0  # calls served by the lane (tests, bench)

    async def capture(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: learn each session's connection from the SDK's own ``initialize``."""
        result = await call_next(ctx)
        if ctx.method == "initialize":
            conn = connection_of(ctx.session)
            if conn.session_id is not None:
                self._state = ctx.lifespan_context
                self._prune()
                self._connections[conn.session_id] = conn
        return result

    def _prune(self) -> None:
        # sessions the manager no longer holds (closed, timed out, revoked)
        open_ids = {sid for sid, _ in open_http_sessions(self._manager)}
        for sid in [s for s in self._connections if s not in open_ids]:
            del self._connections[sid]
            self._headers.pop(sid, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            if scope["type"] == "http" and scope["method"] == "DELETE":
                self._ended()
            return
        session = self._established(scope)
        if session is None:
            await self.app(scope, receive, send)
            return
        body, more = await read_body(receive)
        await self._post(scope, body, more, receive, send, *session)

    def post(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> Awaitable[None]:
        """A POST whose whole body the caller has read already (``gateway.server.httpfront``);
        a plain function: no frame of its own that every resumption of the call passes."""
        session = self._established(scope)
        if session is None:
            return self.app(scope, replaying(body, False, receive), send)
        return self._post(scope, body, False, receive, send, *session)

    def _established(self, scope: Scope) -> tuple[str, Connection] | None:
        """The session of a POST the lane may take: one whose ``initialize`` it saw, in a
        handshake-era protocol version; None: the SDK's request."""
        headers = scope_headers(scope)
        sid = headers.get("mcp-session-id")
        conn = self._connections.get(sid) if sid is not None else None
        pv = headers.get("mcp-protocol-version")
        if sid is None or conn is None or (pv is not None and pv not in HANDSHAKE_PROTOCOL_VERSIONS):
            return None
        return sid, conn

    async def _post(
        self,
        scope: Scope,
        body: bytes,
        more: bool | None,
        receive: Receive,
        send: Send,
        sid: str,
        conn: Connection,
    ) -> None:
        """A POST of an established session: served here, or by the SDK with its body replayed."""
        replay = replaying(body, more, receive)
        held = more is not None and await self._serve(scope, replay, receive, send, sid, conn, body)
        if held is True:
            return
        if held is False:
            await self.app(scope, replay, send)
            return
        try:  # the SDK serves a request: its id is in flight while its POST runs
            await self.app(scope, replay, send)
        finally:
            self._sdk_posts.discard(held)

    async def _serve(
        self,
        scope: Scope,
        replay: Receive,
        receive: Receive,
        send: Send,
        sid: str,
        conn: Connection,
        body: bytes,
    ) -> bool | tuple[str, types.RequestId]:
        """Answer the POST here (True: in the lane, or refused), or leave it to the SDK (False;
        a key: the SDK's request of this id, held in ``_sdk_posts`` until its POST ends)."""
        user = scope.get("user")
        requestor = self._requestor(user) if isinstance(user, AuthenticatedUser) else None
        transport = http_session_transport(self._manager, sid, requestor)  # this credential's session
        if transport is None or transport.is_terminated:
            return False
        request = Request(scope, replay)
        json_mode = transport.is_json_response_enabled
        if not await self._admitted(transport, json_mode, request):
            return False  # the SDK's refusal, from the SDK
        if b"notifications/cancelled" in body:
            self._cancelled(sid, body)  # and the SDK gets it too
            return False
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        rid = request_id(msg)
        if rid is None:
            return False  # not one request: notifications, responses, batches, the malformed
        key = (sid, coerce_request_id(rid))
        if key in self._in_flight or key in self._sdk_posts or transport_serving(transport, str(rid)):
            await send_json(send, reused(rid), sid, 400)
            return True
        # an integer orjson made a float: the SDK's (after the reuse check, and recorded as the
        # SDK's request like any other it serves); 19 digits of a string are the lane's
        call = None if inexact(body, msg) else self._lane_call(conn, msg)
        if call is None:
            self._sdk_posts.add(key)
            return key
        return await self._take(key, call, transport, request, conn, json_mode, send, receive)

    def _requestor(self, user: AuthenticatedUser) -> AuthorizationContext:
        """The SDK's ``authorization_context`` of ``user``, kept per user object: the auth gate
        hands every request of a credential the same one (``AuthGate._user``), which the SDK
        only reads; held here, so an id is never another user's. A bounded map."""
        requestor = self._requestors.get(user)
        if requestor is None:
            if len(self._requestors) >= _REQUESTORS_KEPT:
                self._requestors.clear()
            requestor = self._requestors[user] = authorization_context(user)
        return requestor

    async def _admitted(self, transport: Any, json_mode: bool, request: Request) -> bool:
        """The transport's own tests of a POST: Accept for its reply mode, Content-Type, Host,
        Origin. They read only those four headers, with the same settings in every session of
        the manager (it makes each transport with its ``security_settings`` and reply mode), so
        a combination that passed once passes again without the SDK's parse; remembered only
        when it passed (a refusal runs the SDK's checks every time, which log it), a bounded set."""
        headers = scope_headers(request.scope)
        # all the transport's POST tests read (a tuple display: a generator was 5 calls a POST)
        get = headers.get
        key = (json_mode, get("accept"), get("content-type"), get("host"), get("origin"))
        if key in self._admits:
            return True
        has_json, has_sse = check_accept_headers(request)
        if (
            not (has_json and (json_mode or has_sse))  # the transport's Accept test of its mode
            or not json_content(headers)
            or not await transport_admits(transport, request)
        ):
            return False
        if len(self._admits) >= _ADMITS_KEPT:
            self._admits.clear()
        self._admits.add(key)
        return True

    def _lane_call(
        self, conn: Connection, msg: Any
    ) -> tuple[types.RequestId, dict[str, Any], str | int | None] | None:
        """The call the lane serves (``plain_call``), or None: the SDK's."""
        if not self._serve_calls or not conn.initialize_accepted or "tools/call" in self._server.cache_hints:
            return None
        return plain_call(msg)

    async def _take(
        self,
        key: tuple[str, types.RequestId],
        call: tuple[types.RequestId, dict[str, Any], str | int | None],
        transport: Any,
        request: Request,
        conn: Connection,
        json_mode: bool,
        send: Send,
        receive: Receive,
    ) -> bool:
        """A lane call answered (True), or left to the SDK (False: the session's idle period ran out)."""
        rid, params, token = call
        hold = transport_hold(transport)
        if hold == HOLD_REFUSED:
            return False
        try:
            self.taken += 1
            if not json_mode:
                answer = SseAnswer(transport, str(rid), send, receive, self._store)
                dctx = SseLaneDispatch(conn, rid, token, request, answer)
                await self._run_sse(key, conn, dctx, params)
                return True
            # progress has no wire in a JSON reply (the SDK drops it too)
            reply = await self._run(key, conn, JsonLaneDispatch(conn, rid, request), params, transport)
        finally:
            if hold == HOLD_HELD:
                transport_release(transport)
        await send_json(send, *reply)
        return True

    async def _run_sse(
        self,
        key: tuple[str, types.RequestId],
        conn: Connection,
        dctx: SseLaneDispatch,
        params: dict[str, Any],
    ) -> None:
        """The call answered as an event stream (``SseAnswer``): opened before the call runs,
        the call run in this task, its outcome written last (after whatever it routed to its
        stream, which the answer's pump writes meanwhile)."""
        sid = key[0]
        answer = dctx.answer
        cancel = asyncio_cancel_scope()
        self._in_flight[key] = (cancel, dctx)
        try:
            headers = self._headers.get(sid)
            if headers is None:
                headers = self._headers[sid] = sse_headers(sid)
            pv = scope_headers(dctx.request.scope).get("mcp-protocol-version", DEFAULT_NEGOTIATED_VERSION)
            await answer.open(headers, pv)
        except BaseException:
            self._settled(key, dctx)
            raise

        def stop() -> None:  # the server is stopping: the call ends as the session's shutdown ends it
            dctx.shutdown = True
            cancel.cancel()

        answer.stop = stop
        # The call is watched (pings, the server's exit; the headers sent ahead) only once it
        # has run ``HOLD_S`` (or routes something to its stream): a quicker call is answered
        # before a watch would have done anything (most calls: no watch, no task but this one).
        hold = asyncio.get_running_loop().call_later(HOLD_S, answer.hold_over)
        try:
            await self._call_sse(key, conn, dctx, params, cancel)
        finally:
            hold.cancel()
            answer.close()

    async def _call_sse(
        self,
        key: tuple[str, types.RequestId],
        conn: Connection,
        dctx: SseLaneDispatch,
        params: dict[str, Any],
        cancel: anyio.CancelScope,
    ) -> None:
        out: dict[str, Any] | types.ErrorData | None = None
        try:
            with cancel:
                out = await run_call(self._server, self._state, conn, dctx, params, dctx.request, self._chain)
        finally:
            self._settled(key, dctx)
        if dctx.shutdown and out is None:  # the server stops: the SDK's dispatcher answers so
            out = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
        # a call its client cancelled is not answered with its result (the SDK's dispatcher
        # writes nothing, the transport's unanswered hook answers REQUEST_CANCELLED)
        await dctx.answer.respond(dctx.request_id, None if dctx.cancelled else out)

    def _settled(self, key: tuple[str, types.RequestId], dctx: LaneDispatch) -> None:
        dctx.close()
        if (entry := self._in_flight.get(key)) is not None and entry[1] is dctx:
            del self._in_flight[key]
        dctx.finish()

    async def _run(
        self,
        key: tuple[str, types.RequestId],
        conn: Connection,
        dctx: JsonLaneDispatch,
        params: dict[str, Any],
        transport: Any,
    ) -> tuple[bytes, str, int]:
        cancel = asyncio_cancel_scope()
        self._in_flight[key] = (cancel, dctx)
        out: dict[str, Any] | types.ErrorData | None = None
        try:
            with cancel:
                out = await run_call(self._server, self._state, conn, dctx, params, dctx.request, self._chain)
        finally:
            self._settled(key, dctx)
        sid = key[0]
        if transport.is_terminated:  # the session ended meanwhile: the SDK's answer to its POST
            error = types.JSONRPCError(
                jsonrpc="2.0",
                id=None,
                error=types.ErrorData(
                    code=types.INTERNAL_ERROR, message="Session terminated before the request completed"
                ),
            )
            return error.model_dump_json(by_alias=True, exclude_unset=True).encode(), sid, 500
        if out is None:  # cancelled by the client: the 2025-era wire answers it
            out = types.ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
        if isinstance(out, types.ErrorData):
            reply = types.JSONRPCError(jsonrpc="2.0", id=dctx.request_id, error=out)
            return reply.model_dump_json(by_alias=True, exclude_unset=True).encode(), sid, 200
        return orjson.dumps({"jsonrpc": "2.0", "id": dctx.request_id, "result": out}), sid, 200

    def _ended(self) -> None:
        """After a DELETE (or a revoked key's sessions closed): the lane calls of sessions that
        are gone are cancelled, as the SDK's session task group cancels its handlers (their
        POSTs get the SDK's 500)."""
        self._prune()
        for (sid, _), (cancel, _) in list(self._in_flight.items()):
            if sid not in self._connections:
                cancel.cancel()

    def session_closed(self, sid: str) -> None:
        """The gateway closed session ``sid`` itself (its API key was revoked)."""
        self._ended()

    def _cancelled(self, sid: str, body: bytes) -> None:
        rid = cancelled_id(body)
        entry = self._in_flight.get((sid, rid)) if rid is not None else None
        if entry is not None:
            entry[1].cancel()
            entry[0].cancel()
