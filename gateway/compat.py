"""Every use of a private attribute of the MCP SDK, asyncio or docker, in one module.

The gateway needs a few things the libraries do not (yet) offer publicly. Each reach-in is
one function here, with a test in ``tests/test_compat.py`` that fails with a clear message
naming the function when a library upgrade removes what it uses; nothing else in
``gateway/`` touches a private name of a library. Written against mcp 2.x (see
``reference/`` for the measured API).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio

# Private modules: ``negotiate_auto`` is the SDK's connect-time policy for ``mode="auto"``
# (probe ``server/discover``, adopt a 2026 version, else ``initialize``); the context streams
# carry contextvars across the stdio transport's tasks as the SDK's own ``stdio_server`` does.
from mcp.client._probe import negotiate_auto
from mcp.client.session import (  # the SDK client's result fix-ups (gateway.upstream.fastcall)
    ClientSession,
    _clamp_inbound_ttl,
    _later_revision_fields,
)
from mcp.client.stdio import (  # the SDK's process helpers for stdio servers (gateway.upstream.stdio)
    _create_platform_compatible_process,
    _drain_stdout,
    _get_executable_command,
    _parse_line,
    _stop_server_process,
)
from mcp.server._otel import OpenTelemetryMiddleware  # the SDK's SERVER span (the fast lanes' light twin)
from mcp.server.session import ServerSession
from mcp.server.streamable_http import (
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCMessage, RequestId
from starlette.requests import Request

from gateway.errors import SdkChanged

__all__ = [
    "SdkChanged",
    "clamp_inbound_ttl",
    "close_http_session",
    "connection_of",
    "create_context_streams",
    "drain_stdout",
    "executable_command",
    "http_session_counts",
    "http_session_transport",
    "is_sdk_span_middleware",
    "later_revision_fields",
    "negotiate_auto",
    "open_http_sessions",
    "parse_stdio_line",
    "process_stdin_writer",
    "process_stdout_reader",
    "raw_socket",
    "receiver_waits_idle",
    "related_notify",
    "related_request",
    "stamp_requests",
    "start_stdio_process",
    "stop_stdio_process",
    "stream_reader_head",
    "tap_lines",
    "tap_process_stdout",
    "transport_admits",
    "transport_busy",
    "transport_close_stream",
    "transport_holds_stream",
    "transport_open_stream",
    "transport_priming_event",
    "transport_serving",
    "transport_store_event",
    "transport_write",
]

_logger = logging.getLogger("symbi.compat")

RequestStamp = Callable[[dict[str, Any], Any], None]


def connection_of(session: ServerSession) -> Any:
    """The per-client ``Connection`` behind a request's session (``ServerSession._connection``).

    Used to push handshake-era ``list_changed`` notifications to every connected client and
    to name a stdio session; the SDK gives per-request sessions only.
    """
    try:
        return session._connection
    except AttributeError:
        raise SdkChanged("ServerSession._connection") from None


def stamp_requests(session: ClientSession, extra: Callable[[dict[str, Any]], None]) -> None:
    """Call ``extra(request)`` on every request ``session`` sends, after the SDK's own stamp.

    ``ClientSession._stamp`` fills each request's protocol envelope (it is replaced when the
    protocol version is negotiated, so install this after connecting). The gateway adds the
    calling client's capabilities for 2026 upstreams.
    """
    stamp: RequestStamp | None = getattr(session, "_stamp", None)
    if stamp is None:
        raise SdkChanged("ClientSession._stamp")
    inner = stamp

    def stamped(data: dict[str, Any], opts: Any) -> None:
        inner(data, opts)
        extra(data)

    session._stamp = stamped


def open_http_sessions(manager: StreamableHTTPSessionManager) -> list[tuple[str, str | None]]:
    """(session id, owner client id) of the open streamable HTTP sessions (legacy era).

    Read from ``_server_instances`` and ``_session_owners``; the SDK has no listing.
    """
    try:
        instances = manager._server_instances
        owners = manager._session_owners
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPSessionManager.{e.name}") from None
    out = []
    for sid in list(instances):
        owner = owners.get(sid)
        out.append((sid, owner.get("client_id") if owner else None))
    return out


def http_session_counts(manager: StreamableHTTPSessionManager) -> tuple[int, int]:
    """How many sessions the manager holds, and how many session owners (``GET /api/state``).

    Counted apart: an owner left behind by a closed session is a leak the footprint test finds.
    """
    try:
        return len(manager._server_instances), len(manager._session_owners)
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPSessionManager.{e.name}") from None


def http_session_transport(
    manager: StreamableHTTPSessionManager, sid: str, requestor: object
) -> StreamableHTTPServerTransport | None:
    """The transport of the open session ``sid`` if ``requestor`` (the SDK's
    ``authorization_context`` of the request's user) opened it, else None: the manager's own
    routing test (``_server_instances``, ``_session_owners``), for the HTTP fast lane."""
    try:
        transport = manager._server_instances.get(sid)
        owners = manager._session_owners
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPSessionManager.{e.name}") from None
    if transport is None or owners.get(sid) != requestor:
        return None
    return transport


async def transport_admits(transport: StreamableHTTPServerTransport, request: Request) -> bool:
    """Whether the transport's own security check (Content-Type, Host, Origin) passes a POST
    (``_security``): the HTTP fast lane takes only what the SDK's path would let through."""
    try:
        security = transport._security
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._security") from None
    return await security.validate_request(request, is_post=True) is None


def transport_serving(transport: StreamableHTTPServerTransport, request_id: str) -> bool:
    """Whether the SDK's path of the session has a request of this id in flight
    (``_request_streams``, keyed by ``str(id)``)."""
    try:
        return request_id in transport._request_streams
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._request_streams") from None


@contextlib.contextmanager
def transport_busy(transport: StreamableHTTPServerTransport) -> Iterator[bool]:
    """Hold the session open while a fast-lane request is served, as the transport's
    ``handle_request`` does (``_requests_in_flight``, ``idle_scope``, ``_idle_timeout``);
    yields False when the idle period already ran out (the caller leaves the request to the
    SDK, which answers it as terminated)."""
    try:
        scope, timeout = transport.idle_scope, transport._idle_timeout
        if scope is None or timeout is None:
            yield True
            return
        if scope.cancel_called:
            yield False
            return
        transport._requests_in_flight += 1
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPServerTransport.{e.name}") from None
    scope.deadline = math.inf
    try:
        yield True
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            scope.deadline = anyio.current_time() + timeout


RequestStream = tuple[Any, Any]  # the (send, receive) memory streams of one request's SSE answer


def transport_open_stream(transport: StreamableHTTPServerTransport, stream_id: str) -> RequestStream:
    """Register the stream the session's message router fills for request ``stream_id``
    (``_request_streams``, as the SDK's POST handler does in SSE mode): the messages related to
    the request (progress, the relay's server->client requests) and its response, each with the
    event id the event store gave it."""
    try:
        streams = transport._request_streams
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._request_streams") from None
    pair = anyio.create_memory_object_stream[EventMessage](REQUEST_STREAM_BUFFER_SIZE)
    streams[stream_id] = pair
    return pair


def transport_close_stream(
    transport: StreamableHTTPServerTransport, stream_id: str, pair: RequestStream
) -> bool:
    """Close ``pair`` and unregister it if it is still the stream of ``stream_id`` (a request of
    the same id sent to the SDK meanwhile replaces it: that one is left alone). True when it was."""
    try:
        streams = transport._request_streams
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._request_streams") from None
    pair[0].close()
    pair[1].close()
    if streams.get(stream_id) is pair:
        del streams[stream_id]
        return True
    return False


def transport_holds_stream(
    transport: StreamableHTTPServerTransport, stream_id: str, pair: RequestStream
) -> bool:
    """Whether ``pair`` is still the registered stream of ``stream_id``."""
    try:
        return transport._request_streams.get(stream_id) is pair
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._request_streams") from None


async def transport_priming_event(
    transport: StreamableHTTPServerTransport, stream_id: str, protocol_version: str
) -> dict[str, Any] | None:
    """The SSE priming event of a request stream, stored in the event store first
    (``_mint_priming_event``: none without a store or before protocol 2025-11-25)."""
    try:
        mint = transport._mint_priming_event
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._mint_priming_event") from None
    return await mint(stream_id, protocol_version)


async def transport_write(transport: StreamableHTTPServerTransport, message: JSONRPCMessage) -> None:
    """Send ``message`` through the session's message router (``_write_stream``), as the
    dispatcher writes a response: stored in the event store, routed to its request's stream
    after everything written before it."""
    try:
        stream = transport._write_stream
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._write_stream") from None
    if stream is None:
        raise anyio.ClosedResourceError
    await stream.send(SessionMessage(message))


async def related_notify(
    outbound: Any, request_id: RequestId, method: str, params: Any, opts: Any = None
) -> None:
    """A notification on request ``request_id``'s own stream, as the SDK's per-request dispatch
    context sends it (the dispatcher's private ``_related_request_id``)."""
    await outbound.notify(method, params, opts, _related_request_id=request_id)


async def related_request(
    outbound: Any, request_id: RequestId, method: str, params: Any, opts: Any = None
) -> dict[str, Any]:
    """A server->client request on request ``request_id``'s own stream (as ``related_notify``)."""
    result: dict[str, Any] = await outbound.send_raw_request(
        method, params, opts, _related_request_id=request_id
    )
    return result


def stream_reader_head(reader: asyncio.StreamReader, n: int) -> bytes:
    """The first ``n`` buffered bytes of ``reader`` without consuming them.

    After ``LimitOverrunError`` the oversized line is still buffered; its head holds the
    JSON-RPC id the error reply needs (``StreamReader._buffer``).
    """
    try:
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    except AttributeError:
        raise SdkChanged("asyncio.StreamReader._buffer") from None
    return bytes(buffer[:n])


def _consumer_waits(reader: asyncio.StreamReader, idle: Callable[[], bool] | None) -> bool:
    """Whether ``reader``'s consumer waits for data with nothing unread (``_waiter``, ``_buffer``)
    and, by ``idle``, holds no unfinished line of its own."""
    waiter = reader._waiter  # type: ignore[attr-defined]
    return (
        waiter is not None
        and not waiter.done()
        and not reader._buffer  # type: ignore[attr-defined]
        and not reader._eof  # type: ignore[attr-defined]
        and (idle is None or idle())
    )


def _peel(data: bytes, take: Callable[[bytes], bool], max_line: int) -> int:
    """Hand the whole lines at the front of ``data`` to ``take`` until it declines one; where
    what is left starts."""
    start = 0
    end = data.find(b"\n")
    while end != -1 and end - start <= max_line:
        try:
            taken = take(data[start : end + 1])
        except Exception:  # never into the transport's callback: the consumer gets the line
            _logger.exception("a line tap failed; the line goes to its reader")
            taken = False
        if not taken:
            break
        start = end + 1
        end = data.find(b"\n", start)
    return start


def tap_lines(
    reader: asyncio.StreamReader,
    take: Callable[[bytes], bool],
    *,
    max_line: int,
    idle: Callable[[], bool] | None = None,
) -> bool:
    """Hand whole lines to ``take`` as they arrive, in the protocol's ``data_received``, while
    ``reader``'s consumer waits for data with nothing unread (``StreamReader._waiter``,
    ``_buffer``; ``idle``: the consumer holds no unfinished line of its own either).

    A stdio fast lane uses it to act on a line in the callback that receives it instead of
    one event-loop turn later in the reading task. Lines (with their ``\\n``, found at most
    ``max_line`` bytes in, as ``readuntil``'s limit) go to ``take`` in order until it declines
    one: that line and everything after it are fed as usual, so the consumer still sees all it
    is not spared, in order. False (nothing installed) when asyncio's reader no longer looks as
    expected."""
    if not all(hasattr(reader, a) for a in ("_waiter", "_buffer", "_eof")):
        return False
    feed = reader.feed_data

    def feed_data(data: bytes) -> None:
        if data and _consumer_waits(reader, idle):
            start = _peel(data, take, max_line)
            if start:
                data = data[start:]
                if not data:
                    return  # all taken: the consumer is not woken
        feed(data)

    reader.feed_data = feed_data  # type: ignore[method-assign,assignment]
    return True


def tap_process_stdout(
    process: Any, take: Callable[[bytes], bool], *, max_line: int, idle: Callable[[], bool] | None = None
) -> bool:
    """``tap_lines`` on an anyio process's stdout, one step earlier: in the pipe transport's
    ``data_received`` (``Process._process._transport``'s pipe 1), where asyncio's subprocess
    transport would otherwise hand each chunk to the stream a loop turn later (``call_soon``).
    Lines are taken there only while no chunk is on its way to the stream (counted here), so
    the order holds. Falls back to ``tap_lines`` on the stream; False when neither fits."""
    reader = process_stdout_reader(getattr(process, "stdout", None))
    if reader is None or not all(hasattr(reader, a) for a in ("_waiter", "_buffer", "_eof")):
        return False
    try:
        pipe = process._process._transport.get_pipe_transport(1)
        protocol = pipe.get_protocol()
        forward = protocol.data_received
    except AttributeError:
        return tap_lines(reader, take, max_line=max_line, idle=idle)
    feed = reader.feed_data
    on_the_way = [0]  # chunks handed to the transport's call_soon, not yet fed to the stream

    def data_received(data: bytes) -> None:
        if data and not on_the_way[0] and _consumer_waits(reader, idle):
            start = _peel(data, take, max_line)
            if start:
                data = data[start:]
                if not data:
                    return
        on_the_way[0] += 1
        forward(data)

    def feed_data(data: bytes) -> None:
        if on_the_way[0]:
            on_the_way[0] -= 1
        feed(data)

    protocol.data_received = data_received
    reader.feed_data = feed_data  # type: ignore[method-assign,assignment]
    return True


def is_sdk_span_middleware(middleware: object) -> bool:
    """Whether ``middleware`` (of ``Server.middleware``) is the SDK's OpenTelemetry SERVER-span
    middleware, which the fast lanes run as a lighter twin while no span is recorded."""
    return isinstance(middleware, OpenTelemetryMiddleware)


def process_stdin_writer(stdin: Any) -> asyncio.StreamWriter | None:
    """The asyncio ``StreamWriter`` under an anyio process's stdin (``StreamWriterWrapper._stream``),
    or None when anyio no longer has one there: the upstream fast lane writes a call's line into
    the pipe with it when the writer task holds nothing (no task hop, no checkpoints), and uses the
    writer task when None."""
    writer = getattr(stdin, "_stream", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def process_stdout_reader(stdout: Any) -> asyncio.StreamReader | None:
    """The asyncio ``StreamReader`` under an anyio process's stdout (``StreamReaderWrapper._stream``),
    or None when anyio no longer has one there: the upstream fast lane taps its responses off it
    (``tap_lines``) and reads them in the reader task when None."""
    reader = getattr(stdout, "_stream", None)
    return reader if isinstance(reader, asyncio.StreamReader) else None


def receiver_waits_idle(reader: Any) -> bool:
    """Whether a task waits on ``reader`` (an anyio memory object receive stream) with nothing
    buffered or handed to it: ``statistics()`` without building the statistics object (its
    ``_state``; the stdio lanes ask on every line they write). The statistics when anyio
    has moved it."""
    state: Any = getattr(reader, "_state", None)
    try:
        return bool(state.waiting_receivers) and not state.buffer and not state.waiting_senders
    except AttributeError:
        stats = reader.statistics()
        return bool(
            stats.tasks_waiting_receive > 0
            and stats.current_buffer_used == 0
            and stats.tasks_waiting_send == 0
        )


def raw_socket(sock: Any) -> Any:
    """The socket under docker's ``attach_socket`` result (a ``SocketIO`` wrapping ``_sock``)."""
    return getattr(sock, "_sock", sock)


def close_http_session(manager: StreamableHTTPSessionManager, sid: str) -> Awaitable[None] | None:
    """End the streamable HTTP session ``sid`` now (its id answers 404 from here on): the
    awaitable of ``_discard_session``, or None when the session is already gone. Used to free a
    revoked API key's sessions; the SDK has no public way to end a session server-side."""
    try:
        instances = manager._server_instances
        discard = manager._discard_session
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPSessionManager.{e.name}") from None
    transport = instances.get(sid)
    return discard(sid, transport) if transport is not None else None


# The SDK's stdio process helpers (platform quirks, the grace period, tree kill), used by
# gateway.upstream.stdio's bounded transport: private functions of ``mcp.client.stdio``.
executable_command = _get_executable_command
start_stdio_process = _create_platform_compatible_process
drain_stdout = _drain_stdout
parse_stdio_line = _parse_line
stop_stdio_process = _stop_server_process

# What ``ClientSession.send_request`` does to a raw result before validating it, reused by the
# fast lane of tools/call so it accepts and refuses exactly what the SDK's path does: floor a
# negative ``ttlMs``, and the result keys of protocol revisions newer than the negotiated one.
clamp_inbound_ttl = _clamp_inbound_ttl
later_revision_fields = _later_revision_fields


def w3c_default_propagators(textmap: object) -> bool:
    """Whether ``textmap`` (the global propagator) is exactly OpenTelemetry's default: a
    ``CompositePropagator`` (its ``_propagators``) of W3C trace context, then W3C baggage.
    ``gateway.telemetry.inject_trace`` writes their ``traceparent`` itself only then."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = getattr(textmap, "_propagators", None)
    return (
        type(textmap) is CompositePropagator
        and isinstance(parts, list | tuple)
        and [type(p) for p in parts] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )


def unsampled_span(tracer: object, parent: Any) -> Any:
    """The span an SDK ``Tracer.start_span`` makes when its sampler drops it (``parent``: the
    parent's ``SpanContext``, possibly invalid): a ``NonRecordingSpan`` in ``parent``'s trace
    (its trace state, its random-trace-id flag) or a new trace, with a new span id, both from
    the tracer's ``id_generator``; without the sampler's call and ``start_span``'s layers. The
    caller knows the sampler drops it (the gateway's, while nothing exports and the parent is
    not sampled). None when ``tracer`` would do more than that: not the SDK's, disabled by its
    configurator (``_tracer_config``), or counting spans (``_tracer_metrics``)."""
    Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags = _otel_sdk()
    if not (
        type(tracer) is Tracer
        and isinstance(getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics)
        and getattr(getattr(tracer, "_tracer_config", None), "is_enabled", None) is True
    ):
        return None
    ids = tracer.id_generator  # type: ignore[attr-defined]
    if parent.is_valid:
        trace_id, random, state = parent.trace_id, parent.trace_flags.random_trace_id, parent.trace_state
    else:
        trace_id, random, state = ids.generate_trace_id(), ids.is_trace_id_random(), None
    flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if random else TraceFlags.DEFAULT)
    return NonRecordingSpan(
        SpanContext(trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags, trace_state=state)
    )


@functools.cache
def _otel_sdk() -> tuple[Any, ...]:
    """The OpenTelemetry SDK classes ``unsampled_span`` uses, imported once (on first use)."""
    from opentelemetry.sdk.trace import Tracer
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    return Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags


async def transport_store_event(
    transport: StreamableHTTPServerTransport, stream_id: str, message: JSONRPCMessage
) -> str | None:
    """Store ``message`` in the session's event store under ``stream_id``, as the message router
    stores what it routes (``_event_store``); its event id, or None without a store. The SSE
    lane answers a call nothing else was routed to without the router's round trip."""
    try:
        store = transport._event_store
    except AttributeError:
        raise SdkChanged("StreamableHTTPServerTransport._event_store") from None
    if not store:
        return None
    event_id: str = await store.store_event(stream_id, message)
    return event_id
