"""The SDK's streamable HTTP client transport, with its parse failures read again.

``StreamableHTTPTransport`` turns a message it cannot parse into a PARSE_ERROR for the request
in flight (or hands the exception to the session on the GET stream), whatever the message was.
For text that is not valid UTF-8 (``gateway.upstream.unreadable``) that is wrong three ways:
the call fails with a parse error naming nothing, a request of the upstream's (sampling,
elicitation, roots) is never answered, and a notification in a call's SSE stream fails the
call. ``ScreenedTransport`` overrides the two private methods that parse
(``_handle_sse_event``, ``_handle_json_response``): each runs the SDK's own with the read stream
watched, and only when it reports a failure is the raw text read again. ``screened_http_client``
is ``streamable_http_client`` with that transport (the SDK builds its transport inside).

It also ends the POST of a request the session abandoned (timed out, cancelled) under the
2025-11-25 protocol too: the SDK aborts it only at 2026-07-28 and, before that, only POSTs the
``notifications/cancelled`` frame, so a server that keeps the request's SSE stream open (an SSE
comment now and then: no read ever times out) held one connection and task per timed-out call
for as long as it liked. The frame is still POSTed; the stream is closed as well.

And it opens the GET stream (server to client) again when the SDK gives it up after two
failures in a row, as the caller says (``reopen_get``; see gateway.upstream.bounded_http).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx2
from httpx2 import ServerSentEvent
from mcp.client.streamable_http import StreamableHTTPTransport
from mcp.shared._compat import resync_tracer
from mcp.shared._context_streams import ContextSendStream, create_context_streams
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params
from mcp.shared.message import SessionMessage
from mcp_types import PARSE_ERROR, JSONRPCError, JSONRPCNotification, RequestId

from gateway.errors import SdkChanged
from gateway.upstream.unreadable import Unreadable, error_message, refused_answer, unreadable

Seen = Callable[[Unreadable], None]
_Writer = ContextSendStream[SessionMessage | Exception]


class _Watch:
    """The read stream's writer during one SDK parse: a parse failure it reports (the exception,
    or the PARSE_ERROR it makes for the request) is held back; anything else passes."""

    __slots__ = ("_inner", "held")

    def __init__(self, inner: _Writer) -> None:
        self._inner = inner
        self.held: SessionMessage | Exception | None = None

    async def send(self, item: SessionMessage | Exception) -> None:
        if isinstance(item, Exception) or (
            isinstance(item.message, JSONRPCError) and item.message.error.code == PARSE_ERROR
        ):
            self.held = item
            return
        await self._inner.send(item)


class ScreenedTransport(StreamableHTTPTransport):
    """``StreamableHTTPTransport`` answering a message whose text is not valid UTF-8 at once:
    an answer fails its request naming where, a request of the upstream's gets an error
    answer POSTed back, a notification is dropped (``seen`` is told of each)."""

    def __init__(self, url: str, *, max_sse_event_size: int | None, seen: Seen, reply: _Writer) -> None:
        super().__init__(url, max_sse_event_size=max_sse_event_size)
        if not isinstance(getattr(self, "_in_flight_posts", None), dict):
            raise SdkChanged("StreamableHTTPTransport._in_flight_posts")
        # overridden below: renamed in the SDK, the override would silently never run
        if not callable(getattr(super(), "_consume_modern_cancellation", None)):
            raise SdkChanged("StreamableHTTPTransport._consume_modern_cancellation")
        self._seen = seen
        self._reply = reply  # the session's write stream: an answer sent there is POSTed

    def _consume_modern_cancellation(self, session_message: SessionMessage) -> bool:
        consumed: bool = super()._consume_modern_cancellation(session_message)
        message = session_message.message
        if consumed or not (
            isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled"
        ):
            return consumed
        # 2025-11-25: the frame is POSTed (returned False) and the abandoned request's POST,
        # whose answer nobody waits for any more, is closed too (the SDK leaves it open)
        request_id = cancelled_request_id_from_params(message.params)
        post = self._in_flight_posts.get(request_id) if request_id is not None else None
        if post is not None:
            post.scope.cancel()
        return False

    async def _handle_sse_event(
        self,
        sse: ServerSentEvent,
        read_stream_writer: _Writer,
        original_request_id: RequestId | None = None,
        resumption_callback: Callable[[str], Awaitable[None]] | None = None,
    ) -> bool:
        watch = _Watch(read_stream_writer)
        done: bool = await super()._handle_sse_event(
            sse,
            watch,  # type: ignore[arg-type]  # only its send is used
            original_request_id,
            resumption_callback,
        )
        if watch.held is None:
            return done
        found = unreadable(sse.data)
        if found is None:
            await read_stream_writer.send(watch.held)
            return done
        return await self._refused(found, read_stream_writer, original_request_id)

    async def _handle_json_response(
        self, response: httpx2.Response, read_stream_writer: _Writer, *, request_id: RequestId
    ) -> None:
        watch = _Watch(read_stream_writer)
        await super()._handle_json_response(
            response,
            watch,  # type: ignore[arg-type]
            request_id=request_id,
        )
        if watch.held is None:
            return
        found = None
        with contextlib.suppress(httpx2.ResponseNotRead):  # the body was refused unread (too big)
            found = unreadable(response.content)
        if found is None:
            await read_stream_writer.send(watch.held)
            return
        self._seen(found)
        if found.kind == "request" and found.reply is not None:
            await self._reply.send(error_message(found.reply))
        # a JSON body answers the request it came with, whatever it holds: that request fails
        await read_stream_writer.send(error_message(refused_answer(request_id, found.where)))

    async def _refused(self, found: Unreadable, writer: _Writer, request_id: RequestId | None) -> bool:
        """Act on ``found`` (an SSE event on the stream of ``request_id``, if any): whether it
        was that request's answer (refused: the request fails, naming where)."""
        self._seen(found)
        if found.reply is None:  # a notification: dropped
            return False
        if found.kind == "request":
            await self._reply.send(error_message(found.reply))
            return False
        # an answer on a request's stream is that request's (as the SDK reads it)
        await writer.send(
            error_message(
                refused_answer(request_id if request_id is not None else found.reply["id"], found.where)
            )
        )
        return request_id is not None


REOPEN_PAUSE_S = 1.0  # between the SDK giving the GET stream up and reopening it (at least)


async def _kept_get_stream(
    transport: ScreenedTransport,
    client: httpx2.AsyncClient,
    writer: _Writer,
    reopen: Callable[[], bool],
) -> None:
    """The SDK's GET stream, opened again whenever it gives up (two failures in a row), while
    the session lasts and ``reopen()`` says so: how often is the HTTP client's pacing."""
    while True:
        await transport.handle_get_stream(client, writer)
        if not transport.session_id or not reopen():
            return
        await anyio.sleep(REOPEN_PAUSE_S)


@contextlib.asynccontextmanager
async def screened_http_client(
    url: str,
    *,
    http_client: httpx2.AsyncClient,
    max_sse_event_size: int | None,
    seen: Seen,
    reopen_get: Callable[[], bool] = lambda: False,
) -> AsyncIterator[tuple[Any, Any]]:
    """``mcp.client.streamable_http.streamable_http_client`` (mcp 2.3.0) with ``ScreenedTransport``:
    the (read, write) streams of one streamable HTTP connection over ``http_client``. The SDK
    gives its GET stream up for good after two failures in a row; it is opened again while
    ``reopen_get()`` says so (the caller paces the GETs themselves)."""
    read_stream_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_stream_reader = create_context_streams[SessionMessage](0)
    transport = ScreenedTransport(
        url,
        max_sse_event_size=max_sse_event_size,
        seen=seen,
        reply=write_stream,  # type: ignore[arg-type]  # sends SessionMessages only
    )
    try:
        post_writer, _ = transport.post_writer, transport.handle_get_stream
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPTransport.{e.name}") from None
    async with (
        read_stream_writer,
        read_stream,
        write_stream,
        write_stream_reader,
        anyio.create_task_group() as tg,
    ):

        def start_get_stream() -> None:
            tg.start_soon(_kept_get_stream, transport, http_client, read_stream_writer, reopen_get)

        tg.start_soon(
            post_writer,
            http_client,
            write_stream_reader,
            read_stream_writer,
            write_stream,
            start_get_stream,
            tg,
        )
        try:
            yield read_stream, write_stream
        finally:
            if transport.session_id:
                await transport.terminate_session(http_client)
            tg.cancel_scope.cancel()
    await resync_tracer()
