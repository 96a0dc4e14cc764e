"""The HTTP fast lane's answer in SSE mode (the default, ``http.json_response = false``).

The SDK answers a request POST in SSE mode with an event stream: the headers at once, a
priming event (its id stored in the event store, when the client speaks 2025-11-25 or later),
then every message the session's message router routes to the request (progress, the relay's
server->client requests, each stored in the event store under the request's stream id) and
last the response, stored the same way. ``SseAnswer`` writes that stream itself (no
sse-starlette response, no memory stream pair per event, no writer task) and keeps what a
client sees of the SDK's: the priming event is minted by the transport's own method; a call
that sends something on its request's stream (progress, a relayed sampling request) has it
routed as the SDK routes it: the first such message registers the request's stream with the
transport, as the SDK's POST handler does, and the response then goes through the session's
message router too (stored, ordered after the call's notifications). A call that sends
nothing on its stream (most calls) has nothing to order its response after: its response is
stored in the session's event store under the request's stream id (the id the router would
have given it, so ``Last-Event-ID`` replays it the same way) and written here, without the
router's round trip, the request's stream or a pump task. Like sse-starlette it pings a
silent stream every 15 seconds and ends it when the server stops (the call is stopped too,
as the session's shutdown stops it on the SDK's path); a routed stream is let go as soon as
its client goes away (the call runs on; a resumed stream takes the request's id and gets
what follows). A call answered within ``HOLD_S`` costs no task or write beyond its answer
(one timer, cancelled); a slower one gets a watch task then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
from mcp import types
from mcp.server.connection import Connection
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, REQUEST_CANCELLED, StreamableHTTPServerTransport
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.event import ensure_bytes
from sse_starlette.sse import AppStatus
from starlette.requests import Request
from starlette.types import Message, Receive, Send

from gateway.compat import (
    RequestStream,
    asyncio_time,
    related_notify,
    related_request,
    transport_close_stream,
    transport_holds_stream,
    transport_open_stream,
    transport_priming_event,
    transport_serving,
    transport_store_event,
    transport_write,
)
from gateway.server.fastlane import LaneDispatch
from gateway.server.resume import BoundedEventStore, LaneResult, result_message

_logger = logging.getLogger("symbi.server.httplane")

SEP = "\r\n"  # sse-starlette's default line separator
PING_S = EventSourceResponse.DEFAULT_PING_INTERVAL
# The headers and the priming event wait this long for the call's first event, to leave in
# one write with it (most calls answer sooner: one write instead of three, one read for the
# client); a slower call gets them then, as the SDK sends them, so it can resume its stream.
HOLD_S = 0.05
EXIT_POLL_S = 0.5  # how often a stream looks for the server's exit (sse-starlette's own poll)


class SseLaneDispatch(LaneDispatch):
    """The ``DispatchContext`` of a lane call answered as an event stream (``answer``): as the
    SDK's, its notifications and server->client requests ride the request's own stream (the
    dispatcher's related request id; the first one opens the stream, ``SseAnswer.route``), and
    the HTTP request is the message metadata."""

    def __init__(
        self,
        connection: Connection,
        request_id: types.RequestId,
        token: str | int | None,
        request: Request,
        answer: SseAnswer,
    ) -> None:
        super().__init__(connection, request_id, token)
        self.request = request
        self.answer = answer
        self.message_metadata = ServerMessageMetadata(request_context=request)  # type: ignore[assignment]

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        if self._closed:
            raise NoBackChannelError(method)
        self.answer.route()
        return await related_request(self._out, self._request_id, method, params, opts)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        if not self._closed:
            self.answer.route()
            await related_notify(self._out, self._request_id, method, params, opts)


def sse_headers(sid: str) -> list[tuple[bytes, bytes]]:
    """The raw headers the SDK's SSE answer carries (its header set through sse-starlette's)."""
    headers = {
        "Cache-Control": "no-cache, no-transform",
        "Connection": "keep-alive",
        "Content-Type": "text/event-stream",
        MCP_SESSION_ID_HEADER: sid,
    }
    return EventSourceResponse(content=_nothing(), headers=headers).raw_headers


async def _nothing() -> Any:  # an SSE response's content, never iterated (headers only)
    return
    yield


def event_bytes(data: bytes, event_id: str | None) -> bytes:
    """One ``message`` event as sse-starlette encodes it (id, event, data; one data line: the
    JSON has no raw line breaks)."""
    head = b"id: " + event_id.encode() + b"\r\nevent: message\r\n" if event_id else b"event: message\r\n"
    return head + b"data: " + data + b"\r\n\r\n"


def priming_bytes(event: Mapping[str, Any]) -> bytes:
    """The SDK's priming event (an id, empty data, a retry interval) as sse-starlette encodes
    it (``ensure_bytes``), without its encoder object, text buffer and expressions (every SSE
    call has one); any other shape is sse-starlette's to encode."""
    eid = event.get("id")
    retry = event.get("retry")
    if (
        len(event) == (2 if retry is None else 3)
        and event.get("data") == ""
        and type(eid) is str
        and "\r" not in eid
        and "\n" not in eid
        and (retry is None or type(retry) is int)
    ):
        tail = b"retry: " + str(retry).encode() + b"\r\n\r\n" if retry is not None else b"\r\n"
        return b"id: " + eid.encode() + b"\r\ndata: \r\n" + tail
    return ensure_bytes(event, SEP)


class SseAnswer:
    """One lane call's event stream: ``open`` (before the call runs), ``hold_over`` (the call
    has run ``HOLD_S``), ``respond`` with the call's outcome, ``close`` (always, last).

    Its side tasks are plain asyncio tasks, made only when needed and ended by ``close`` (an
    anyio task group per call cost more than the quick call's whole answer): a watch once the
    call has run ``HOLD_S``, and a pump once the call routes something to its stream."""

    def __init__(
        self,
        transport: StreamableHTTPServerTransport,
        stream_id: str,
        send: Send,
        receive: Receive,
        store: BoundedEventStore | None = None,
    ) -> None:
        self._transport = transport
        self._store = store  # the transport's event store when it is ours (it keeps a LaneResult)
        self._stream_id = stream_id
        self._send = send
        self._receive = receive
        self.stop: Callable[[], None] | None = None  # stops the call (the server is stopping)
        self._pair: RequestStream | None = None  # the request's routed stream, once opened
        self._pumped: anyio.Event | None = None  # set when the pump has written its last event
        self._tasks: list[asyncio.Task[None]] = []  # the watch(es) and the pump, once started
        self._watching = False  # a watch was started
        self._watching_client = False  # a watch reads the request (the client's leaving)
        self._own: Any = None  # the response model the lane sent through the router
        self._own_bytes = b""
        self._head: list[tuple[bytes, bytes]] | None = None  # the headers, until sent
        self._priming = b""
        self._ended = False  # the body's last chunk went out (no ping after it)
        self._released = False  # the client left, or the server stops: nothing more is written
        self._routed = False  # the call sent something on its stream: its response follows it

    async def open(self, headers: list[tuple[bytes, bytes]], protocol_version: str) -> None:
        """The priming event is minted first, as the SDK does (storage order is wire order);
        it goes out with the headers (``HOLD_S``)."""
        priming = await transport_priming_event(self._transport, self._stream_id, protocol_version)
        self._head = headers
        self._priming = priming_bytes(priming) if priming is not None else b""

    def hold_over(self) -> None:
        """The call is still running after ``HOLD_S``: its headers and priming event go out (so
        the client can resume its stream) and it is watched, if it was not already."""
        if self._ended:
            return
        if not self._watching:
            self._watching = True
            self._watching_client = self._routed
            self._spawn(self._watch_client(True) if self._routed else self._watch_timers())
        elif self._head is not None:
            self._spawn(self._send_head())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(work))

    def route(self) -> None:
        """Before the call sends a message on its request's stream: its response will follow
        the same way (through the router, after it). The first time, the request's stream is
        registered with the transport (the router delivers to it from now on), a pump task
        writes what it delivers and the client is watched (a client that leaves lets the stream
        go at once, so a resumed stream can take the request's id, as on the SDK's path); not
        after the stream was let go (the router stores the message only, for a resumed stream),
        nor when another stream holds the request's id (a resumed one: the router delivers
        there)."""
        self._routed = True  # a watch of timers only ends at its next tick
        if self._pair is not None or self._released or transport_serving(self._transport, self._stream_id):
            return
        self._pair = transport_open_stream(self._transport, self._stream_id)
        self._pumped = anyio.Event()
        self._spawn(self._stream())
        if not self._watching_client:
            self._watching = self._watching_client = True
            self._spawn(self._watch_client(False))  # the pump sends the headers with its first event

    async def _body(self, chunk: bytes, more: bool = True) -> None:
        if not more:
            self._ended = True
        if self._head is not None:  # the headers first, the priming event before the chunk
            head, self._head = self._head, None
            chunk = self._priming + chunk
            await self._send({"type": "http.response.start", "status": 200, "headers": head})
        await self._send({"type": "http.response.body", "body": chunk, "more_body": more})

    async def _end(self) -> None:
        if not self._ended:
            await self._body(b"", more=False)

    async def _stream(self) -> None:
        """The pump: write the request's routed events until its response (or its stream is
        closed: the session ended, the client left); then end the body."""
        assert self._pair is not None and self._pumped is not None
        try:
            async for event in self._pair[1]:
                msg = event.message
                final = isinstance(msg, types.JSONRPCResponse | types.JSONRPCError)
                if msg is self._own:
                    data = self._own_bytes
                else:
                    data = msg.model_dump_json(by_alias=True, exclude_unset=True).encode()
                await self._body(event_bytes(data, event.event_id), more=not final)
                if final:
                    return
        except (anyio.ClosedResourceError, anyio.EndOfStream):
            _logger.debug("the SSE stream of %s closed before its response", self._stream_id)
        finally:
            self.release()
            try:
                await self._end()
            finally:
                self._pumped.set()

    def release(self) -> None:
        """Let the stream go (the client left, the server stops, or it is answered): later
        messages of the request are stored only, for a resumed stream to replay."""
        self._released = True
        if self._pair is not None:
            transport_close_stream(self._transport, self._stream_id, self._pair)

    async def _send_head(self) -> None:
        if self._head is not None and not self._ended:
            await self._body(b"")  # the headers and the priming event, now (it can resume)

    async def _ping(self) -> None:
        ping = ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=SEP)
        await self._body(ensure_bytes(ping, SEP))

    def _exit(self) -> None:
        """The server is stopping (uvicorn's exit, which sse-starlette flags on ``AppStatus``):
        the stream is let go and the call stopped."""
        self.release()
        if self.stop is not None:
            self.stop()

    async def _watch_timers(self) -> None:
        """The watch of a call that routed nothing: its headers and priming event, a ping
        comment on the silent stream every ``PING_S`` seconds, the server's exit (polled every
        ``EXIT_POLL_S``, as sse-starlette polls it). Ends when the call routes something (the
        client's watch takes over)."""
        await self._send_head()
        ping_at = asyncio_time() + PING_S
        while True:
            await asyncio.sleep(EXIT_POLL_S)
            if self._routed:
                return
            next_ping = await self._quiet_tick(ping_at)
            if next_ping is None:
                return
            ping_at = next_ping

    async def _quiet_tick(self, ping_at: float) -> float | None:
        """A quiet stream's poll: None when the server exits (the stream ended), else the next
        ping's time, after a ping comment if ``ping_at`` has come."""
        if AppStatus.should_exit:
            self._exit()
            return None
        if asyncio_time() >= ping_at and not self._ended:
            ping_at = asyncio_time() + PING_S
            await self._ping()
        return ping_at

    async def _watch_client(self, head: bool) -> None:
        """sse-starlette's side tasks in one, for a routed stream: its headers and priming
        event (``head``), then the stream let go when the client disconnects (a resumed stream
        can take the request's id), a ping comment on a silent stream every ``PING_S`` seconds,
        and the server's exit."""
        if head:
            await self._send_head()
        message: Message | None = None
        ping_at = asyncio_time() + PING_S
        while message is None or message["type"] != "http.disconnect":
            with anyio.move_on_after(EXIT_POLL_S) as quiet:
                message = await self._receive()
            if not quiet.cancelled_caught:
                continue
            message = None
            next_ping = await self._quiet_tick(ping_at)
            if next_ping is None:
                return
            ping_at = next_ping
        self.release()  # the client left: the pump ends, a resumed stream takes the id

    def close(self) -> None:
        """The request is done (answered, or its task is ending): the side tasks end too, as a
        task group's would; a failure of one is raised here."""
        failed: BaseException | None = None
        for task in self._tasks:
            if not task.done():
                task.cancel()
            elif not task.cancelled() and failed is None:
                failed = task.exception()
        if failed is not None:
            raise failed

    async def respond(self, rid: types.RequestId, out: dict[str, Any] | types.ErrorData | None) -> None:
        """The call's outcome (``None``: cancelled, which the 2025-era wire answers
        ``REQUEST_CANCELLED``, as the transport's unanswered hook does): through the session's
        router after what the call routed, else stored and written here. Returns when the
        response (or the end of the stream) has been written."""
        if self._transport.is_terminated:
            # the session ended: its streams are closed, as the SDK's (no answer)
            await (self._pumped.wait() if self._pumped is not None else self._end())
            return
        if self._routed or transport_serving(self._transport, self._stream_id):
            await self._route_own(self._message(rid, out))
        elif self._store is not None and isinstance(out, dict):
            # stored as our store keeps a result (its model made only if a replay needs it)
            self._own_bytes = _result_bytes(rid, out)
            await self._write_own(self._store.store_event(self._stream_id, LaneResult(rid, out)))
        else:
            await self._write_own(
                transport_store_event(self._transport, self._stream_id, self._message(rid, out))
            )

    def _message(self, rid: types.RequestId, out: dict[str, Any] | types.ErrorData | None) -> Any:
        if out is None:
            out = types.ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
        if isinstance(out, types.ErrorData):
            msg: Any = types.JSONRPCError(jsonrpc="2.0", id=rid, error=out)
            self._own_bytes = msg.model_dump_json(by_alias=True, exclude_unset=True).encode()
        else:  # a validated wire result (run_call's serialize): no second validation
            msg = result_message(rid, out)
            self._own_bytes = _result_bytes(rid, out)
        self._own = msg
        return msg

    async def _write_own(self, stored: Awaitable[str | None]) -> None:
        """Nothing was routed to this request's id: the response is the stream's next event.
        Stored as the router stores it (``stored``; even when the client has left: a resumed
        stream replays it), then written, the body's last chunk."""
        event_id = await stored
        if self._released:
            await self._end()
        elif not self._ended:
            await self._body(event_bytes(self._own_bytes, event_id), more=False)

    async def _route_own(self, msg: Any) -> None:
        """Through the session's router: to this request's stream after what the call routed to
        it (the pump writes it), or to the stream that holds the request's id now (a resumed
        one; this one ends without it, as the SDK's)."""
        try:
            await transport_write(self._transport, msg)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            _logger.debug("the answer to %r dropped: the session is closing", msg.id)
        pair = self._pair
        if pair is not None and not transport_holds_stream(self._transport, self._stream_id, pair):
            # a request of the same id went to the SDK meanwhile and took the id's stream (the
            # SDK's routing by id): this stream ends without an answer instead of hanging
            pair[0].close()
        await (self._pumped.wait() if self._pumped is not None else self._end())


def _result_bytes(rid: types.RequestId, result: dict[str, Any]) -> bytes:
    """The wire bytes of the response to ``rid`` carrying ``result`` (the lane's own answer)."""
    return orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result})
