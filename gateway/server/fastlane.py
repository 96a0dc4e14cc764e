"""The client-facing fast lane of ``tools/call`` on the stdio front.

The SDK's server path of a call builds and validates pydantic models on every hop (the
transport's ``JSONRPCMessage``, a context stream, the dispatcher's task, the runner's request
and params validation, the result's dump and re-validation, the response model and its dump).
The lane takes a plain ``tools/call`` of an initialized handshake-era session off the wire
(orjson), runs the SAME handler (``Front.call_tool``: the whole gateway chain, errors made MCP
results by ``gateway.boundary``) under the SAME server middleware (the SDK's OpenTelemetry
SERVER span, whose trace id goes on the audit record) with a real ``ServerSession`` (progress,
and the relay of upstream sampling/elicitation through the SDK's dispatcher, whose replies
come back through the SDK), and writes the reply line itself.

Everything else goes to the SDK unchanged: initialize, other methods, notifications (a
``notifications/cancelled`` for a lane call is acted on here and still passed on), responses,
batches, anything malformed or unusual (unknown keys, a ``_meta`` other than progress and
trace context, a 2026-era envelope), and every call
before ``initialize`` was answered (the lane learns the connection from the SDK's own
``initialize`` through a server middleware). A call whose id is in flight in the session (in
the lane or the SDK) is declined too: the transport refuses it (``stdio.OpenRequests``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from functools import partial
from typing import Any, cast

import anyio
import anyio.abc
import orjson
from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult
from mcp.server.session import ServerSession
from mcp.shared.dispatcher import CallOptions, coerce_request_id
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params, handler_exception_to_error_data
from mcp.shared.message import SessionMessage
from mcp.shared.transport_context import TransportContext
from mcp_types import methods as _methods
from pydantic import BaseModel, ValidationError

from gateway.compat import asyncio_cancel_scope, connection_of, is_sdk_span_middleware
from gateway.server.lanespan import server_span

_logger = logging.getLogger("symbi.server.fastlane")

# a reply and its call (the transport drops a reply still queued when its call is cancelled)
Write = Callable[[bytes | SessionMessage, "LaneDispatch"], Awaitable[None]]
_PARAM_KEYS = frozenset({"name", "arguments", "_meta"})
_META_KEYS = frozenset({"progressToken", "traceparent", "tracestate", "baggage"})
_TRANSPORT = TransportContext(kind="jsonrpc", can_send_request=True)
_SHUTDOWN_S = 1.0
# 19 digits in a row: perhaps an integer past 64 bits, which orjson reads as a float (the
# upstream was sent 1.2345678901234568e+29 for 123456789012345678901234567890; the SDK's
# parser keeps it exact): such a message is left to the SDK when ``inexact`` finds one. The
# search only spares the walk: the digits are as often a string's (a random traceparent has
# 19 in a row once in some 1,300 calls, which left a plain call to the SDK by chance)
_LONG_DIGITS = re.compile(rb"\d{19}")
_EXACT = 2.0**63  # orjson reads integers in [-2**63, 2**64) exactly, any other as a float this big


def inexact(raw: bytes, msg: Any) -> bool:
    """Whether orjson's reading ``msg`` of ``raw`` may differ from the SDK parser's: it holds a
    float of 2**63 or more, what orjson makes of an integer past 64 bits (both lanes ask).
    A loop, not recursion: orjson reads nesting deeper than Python's recursion limit."""
    if not _LONG_DIGITS.search(raw):  # (no such integer without 19 digits in a row)
        return False
    stack = [msg]
    while stack:
        v = stack.pop()
        if isinstance(v, float):
            if not abs(v) < _EXACT:
                return True
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def cancelled_id(raw: bytes) -> types.RequestId | None:
    """The request id a ``notifications/cancelled`` message names (None: not one, or unparsable).

    Both lanes look at every notification for this: the SDK still gets the message, the lane
    cancels its own call of that id."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or msg.get("method") != "notifications/cancelled" or "id" in msg:
        return None
    params = msg.get("params")
    rid = cancelled_request_id_from_params(params if isinstance(params, dict) else None)
    return coerce_request_id(rid) if rid is not None else None


class LaneDispatch:
    """The ``DispatchContext`` of one lane request: what the SDK's dispatcher gives a handler
    (server->client requests and notifications over the connection's channel, progress against
    the caller's token, the peer's cancel), closed when the handler returns."""

    transport = _TRANSPORT
    message_metadata = None

    def __init__(self, connection: Connection, request_id: types.RequestId, token: str | int | None) -> None:
        self._out = connection.outbound
        self._request_id = request_id
        self._token = token
        self._closed = False
        self.shutdown = False
        # the two events are made when someone waits on them (most calls: never)
        self.cancelled = False
        self._cancel_requested: anyio.Event | None = None
        self.finished = False  # answered (or dropped): set last
        self._done: anyio.Event | None = None

    @property
    def request_id(self) -> types.RequestId:
        return self._request_id

    @property
    def progress_token(self) -> str | int | None:
        return self._token

    @property
    def cancel_requested(self) -> anyio.Event:
        """Set when the peer cancels this request (``DispatchContext``)."""
        if self._cancel_requested is None:
            self._cancel_requested = anyio.Event()
            if self.cancelled:
                self._cancel_requested.set()
        return self._cancel_requested

    def cancel(self) -> None:
        self.cancelled = True
        if self._cancel_requested is not None:
            self._cancel_requested.set()

    @property
    def done(self) -> anyio.Event:
        """Set when the call has been answered (or dropped)."""
        if self._done is None:
            self._done = anyio.Event()
            if self.finished:
                self._done.set()
        return self._done

    def finish(self) -> None:
        self.finished = True
        if self._done is not None:
            self._done.set()

    @property
    def can_send_request(self) -> bool:
        return not self._closed

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if self._closed:
            raise NoBackChannelError(method)
        return await self._out.send_raw_request(method, params, opts)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if not self._closed:
            await self._out.notify(method, params, opts)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self._token is None:
            return
        params: dict[str, Any] = {"progressToken": self._token, "progress": progress}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        await self.notify("notifications/progress", params)

    def close(self) -> None:
        self._closed = True


def plain_call(msg: Any) -> tuple[types.RequestId, dict[str, Any], str | int | None] | None:
    """(id, params, progress token) of a plain ``tools/call``, else None (the SDK's case)."""
    if not isinstance(msg, dict) or msg.keys() != {"jsonrpc", "id", "method", "params"}:
        return None
    rid, params = msg["id"], msg["params"]
    if msg["jsonrpc"] != "2.0" or msg["method"] != "tools/call":
        return None
    if isinstance(rid, bool) or not isinstance(rid, int | str) or not isinstance(params, dict):
        return None
    if not isinstance(params.get("name"), str) or not params.keys() <= _PARAM_KEYS:
        return None
    if not isinstance(params.get("arguments", {}), dict):
        return None
    token: str | int | None = None
    if "_meta" in params:
        meta = params["_meta"]
        if not isinstance(meta, dict) or not meta.keys() <= _META_KEYS:
            return None
        if any(not isinstance(meta[k], str) for k in meta.keys() - {"progressToken"}):
            return None
        if "progressToken" in meta:
            token = meta["progressToken"]
            if isinstance(token, bool) or not isinstance(token, int | str):
                return None
    return rid, params, token


class StdioLane:
    """The lane of one stdio connection. ``capture`` goes into ``Server.middleware``; ``offer``
    is called by the transport with each line read, before the SDK sees it."""

    def __init__(self, server: Server[Any]) -> None:
        self._server = server
        self._chain = MiddlewareChain(server)
        self._connection: Connection | None = None
        self._state: Any = None
        self._in_flight: dict[types.RequestId, tuple[anyio.CancelScope, LaneDispatch]] = {}
        # the calls' tasks, by call: a task takes itself out by its call (asyncio.current_task
        # is a loop lookup, a getpid system call each on Python 3.11)
        self._tasks: dict[LaneDispatch, asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None  # the transport's, from attach
        self._write: Write | None = None
        self._sdk_open: Collection[types.RequestId] = frozenset()
        self._limit = sys.maxsize
        self._silenced: dict[Any, None] | None = None
        self.taken = 0  # calls served by the lane (tests, bench)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def serving(self, key: types.RequestId) -> bool:
        """Whether the lane has a call of this (coerced) id in flight."""
        return key in self._in_flight

    def progress_token(self, key: types.RequestId) -> str | int | None:
        """The progress token of the lane's call of this (coerced) id in flight, if it has one."""
        entry = self._in_flight.get(key)
        return entry[1].progress_token if entry is not None else None

    async def capture(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: learn the connection (and the lifespan state) from the SDK's own
        ``initialize``; the lane stays shut until the SDK has answered one."""
        result = await call_next(ctx)
        if ctx.method == "initialize" and self._connection is None:
            self._state = ctx.lifespan_context
            self._connection = connection_of(ctx.session)
        return result

    def attach(
        self,
        tg: anyio.abc.TaskGroup,
        write: Write,
        sdk_open: Collection[types.RequestId] = frozenset(),
        silenced: dict[Any, None] | None = None,
        limit: int | None = None,
    ) -> None:
        """Open the lane on the transport's loop; ``sdk_open``: the ids of the requests the SDK
        serves on this connection (a call reusing one is declined, for the transport to refuse);
        ``silenced``: the progress tokens of cancelled requests, whose progress the transport
        drops (a call of one of them makes it live again); ``limit``: the requests in flight at
        once, both paths (beyond it a call is declined, for the transport to refuse)."""
        self._write = write
        self._sdk_open = sdk_open
        self._limit = limit if limit is not None else sys.maxsize
        self._silenced = silenced
        self._loop = asyncio.get_running_loop()  # the lane is open from here on
        tg.start_soon(self._hold)

    async def _hold(self) -> None:
        """Lives as long as the transport's task group. Each lane call runs as a plain asyncio
        task (anyio's ``start_soon`` costs several times a task's creation, once per call); when
        the group is cancelled (the transport closing), the calls still running are cancelled
        and awaited (bounded) here, as the group's own children would be."""
        try:
            await anyio.sleep_forever()
        finally:
            for scope, _ in list(self._in_flight.values()):
                scope.cancel()
            if self._tasks:
                with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_S):
                    await asyncio.wait(list(self._tasks.values()))

    def offer_now(self, line: bytes) -> bool:
        """``offer`` from the transport's read callback (``gateway.compat.tap_lines``), a turn of
        the event loop before the reading task would: a cancellation is declined here, so the
        reading task acts on it (and passes it on) in order."""
        if b"notifications/cancelled" in line:
            return False
        return self.offer(line)

    def offer(self, line: bytes) -> bool:
        """Serve ``line`` in the lane (True), or leave it to the SDK (False)."""
        conn, loop = self._connection, self._loop
        if loop is None or conn is None or not conn.initialize_accepted:
            return False
        if b"notifications/cancelled" in line:
            self._cancelled(line)
            return False
        if b"tools/call" not in line:
            return False
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return False
        call = None if inexact(line, msg) else plain_call(msg)
        if call is None or "tools/call" in self._server.cache_hints:
            return False
        rid, params, token = call
        key = coerce_request_id(rid)
        if key in self._in_flight or key in self._sdk_open:
            return False  # an id in flight in the session: the transport refuses it
        if len(self._in_flight) + len(self._sdk_open) >= self._limit:
            return False  # the transport refuses it too
        if token is not None and self._silenced:
            self._silenced.pop(token, None)
        dctx = LaneDispatch(conn, rid, token)
        scope = asyncio_cancel_scope()  # on the lane's asyncio loop: no backend lookup per call
        self._in_flight[key] = (scope, dctx)
        self._tasks[dctx] = loop.create_task(self._run(conn, key, scope, dctx, params))
        self.taken += 1
        if _logger.isEnabledFor(logging.DEBUG):
            _logger.debug("tools/call %r in the fast lane", rid)
        return True

    def _cancelled(self, line: bytes) -> None:
        rid = cancelled_id(line)
        entry = self._in_flight.get(rid) if rid is not None else None
        if entry is not None:
            entry[1].cancel()
            entry[0].cancel()

    async def shutdown(self) -> None:
        """End of input: as the SDK's dispatcher does, in-flight calls end with CONNECTION_CLOSED."""
        ending = list(self._in_flight.values())
        for scope, dctx in ending:
            dctx.shutdown = True
            scope.cancel()
        with anyio.move_on_after(_SHUTDOWN_S):
            for _, dctx in ending:
                await dctx.done.wait()

    async def _run(
        self,
        conn: Connection,
        key: types.RequestId,
        scope: anyio.CancelScope,
        dctx: LaneDispatch,
        params: dict[str, Any],
    ) -> None:
        """The call, then its reply. Its id stays in flight until the reply is written or dropped:
        a reply still queued behind the writer when the client cancels the call is dropped
        there (``dctx.cancelled``), so it can never answer a reuse of the id."""
        assert self._write is not None
        reply: bytes | SessionMessage | None = None
        try:
            with scope:
                try:
                    reply = await self._answer(conn, dctx, params)
                finally:
                    dctx.close()
            if dctx.shutdown and reply is None and not dctx.cancelled:
                closed = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
                reply = _error(dctx.request_id, closed)
            if reply is not None and not dctx.cancelled:
                await self._write(reply, dctx)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            _logger.debug("reply to %r dropped: the client's stream is closed", dctx.request_id)
        except Exception:
            _logger.exception("a fast-lane call failed outside its handler")
        finally:
            if (entry := self._in_flight.get(key)) is not None and entry[1] is dctx:
                del self._in_flight[key]
            dctx.finish()
            # no done-callback (a loop turn per call): the task takes itself out of _tasks
            self._tasks.pop(dctx, None)

    async def _answer(
        self, conn: Connection, dctx: LaneDispatch, params: dict[str, Any]
    ) -> bytes | SessionMessage:
        out = await run_call(self._server, self._state, conn, dctx, params, chain=self._chain)
        if isinstance(out, types.ErrorData):
            return _error(dctx.request_id, out)
        return orjson.dumps({"jsonrpc": "2.0", "id": dctx.request_id, "result": out}) + b"\n"


async def run_call(
    server: Server[Any],
    state: Any,
    conn: Connection,
    dctx: LaneDispatch,
    params: dict[str, Any],
    request: Any = None,
    chain: MiddlewareChain | None = None,
) -> dict[str, Any] | types.ErrorData:
    """One lane ``tools/call`` through the server middleware and the handler, as the SDK's
    runner runs it: the wire result, or the error the SDK's dispatcher would answer with.
    Shared by the stdio and the streamable-HTTP lanes (``request``: the HTTP request; ``chain``:
    the lane's composed middleware)."""
    meta = _request_meta(params)
    ctx: ServerRequestContext[Any, Any] = ServerRequestContext(
        session=ServerSession(dctx, conn, request_meta=meta),
        lifespan_context=state,
        method="tools/call",
        params=params,
        request_id=dctx.request_id,
        meta=meta,
        protocol_version=conn.protocol_version,
        request=request,
    )
    try:
        call = (chain or MiddlewareChain(server)).get()
        return cast(dict[str, Any], await call(ctx))  # _inner's _serialize: the wire dict
    except Exception as e:  # the dispatcher's boundary, as the SDK's
        error = handler_exception_to_error_data(e)
        if error is None:
            _logger.exception("handler for 'tools/call' raised")
            error = types.ErrorData(code=0, message=str(e))  # the SDK's dispatcher pins code 0
        return error


class MiddlewareChain:
    """A server's middleware around ``_inner``, composed as the SDK's runner composes them (the
    SDK's span middleware as its lighter twin): once per lane, again if the list changes."""

    __slots__ = ("_call", "_key", "_server")

    def __init__(self, server: Server[Any]) -> None:
        self._server = server
        self._key: tuple[Any, ...] | None = None
        self._call: CallNext | None = None

    def get(self) -> CallNext:
        middleware = tuple(self._server.middleware)
        if self._call is not None and self._key == middleware:
            return self._call
        call: CallNext = partial(_inner, self._server)
        for m in reversed(middleware):
            call = partial(_apply, partial(server_span, m) if is_sdk_span_middleware(m) else m, call)
        self._key, self._call = middleware, call
        return call


async def _inner(server: Server[Any], ctx: ServerRequestContext[Any, Any]) -> HandlerResult:
    """The SDK runner's ``_inner`` for ``tools/call`` on an initialized handshake-era connection."""
    entry = server.get_request_handler("tools/call")
    if entry is None:
        raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data="tools/call")
    typed = entry.params_type.model_validate(ctx.params, by_name=False)
    result = await entry.handler(ctx, typed)
    if isinstance(result, types.ErrorData):
        raise MCPError.from_error_data(result)
    return _serialize(ctx.protocol_version, result)


def _apply(
    middleware: Any, call_next: CallNext, ctx: ServerRequestContext[Any, Any]
) -> Awaitable[HandlerResult]:
    return middleware(ctx, call_next)  # type: ignore[no-any-return]


def _request_meta(params: dict[str, Any]) -> types.RequestParamsMeta | None:
    if "_meta" not in params:
        return None
    try:
        return types.RequestParams.model_validate(params, by_name=False).meta
    except ValidationError:
        return None


def _serialize(version: str, result: Any) -> dict[str, Any]:
    """The runner's ``_serialize`` of a handshake-era core result: dump, then the SDK's sieve."""
    if isinstance(result, BaseModel):
        dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    elif isinstance(result, dict):
        dumped = dict(result)
    else:
        raise TypeError(f"handler returned {type(result).__name__}; expected BaseModel or dict")
    try:
        return _methods.serialize_server_result("tools/call", version, dumped)
    except ValidationError:
        _logger.exception("handler for 'tools/call' returned an invalid result")
        raise MCPError(code=types.INTERNAL_ERROR, message="Handler returned an invalid result") from None


def _error(rid: types.RequestId, error: types.ErrorData) -> SessionMessage:
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=error))
