"""Reach-ins into the MCP SDK's streamable-HTTP session manager and server transport (the
HTTP fast lanes, session listing and revocation)."""

from __future__ import annotations

import math
from collections.abc import Awaitable
from typing import Any

import anyio
from mcp.server.streamable_http import (
    REQUEST_STREAM_BUFFER_SIZE,
    EventMessage,
    StreamableHTTPServerTransport,
)
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCMessage
from starlette.requests import Request

from gateway.compat.streams import asyncio_time
from gateway.errors import SdkChanged


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


# transport_hold's answers
HOLD_REFUSED = 0  # the idle period already ran out: the SDK answers the request (as terminated)
HOLD_FREE = 1  # the session has no idle timeout: nothing to release
HOLD_HELD = 2  # held open: call transport_release when the request is done


def transport_hold(transport: StreamableHTTPServerTransport) -> int:
    """Hold the session open while a fast-lane request is served, as the transport's
    ``handle_request`` does (``_requests_in_flight``, ``idle_scope``, ``_idle_timeout``).
    Two plain functions, not a context manager: the generator and its enter and exit were
    seven calls on every lane call."""
    try:
        scope = transport.idle_scope
        if scope is None or transport._idle_timeout is None:
            return HOLD_FREE
        if scope.cancel_called:
            return HOLD_REFUSED
        transport._requests_in_flight += 1
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPServerTransport.{e.name}") from None
    scope.deadline = math.inf
    return HOLD_HELD


def transport_release(transport: StreamableHTTPServerTransport) -> None:
    """The end of a request ``transport_hold`` held: the idle countdown restarts when it was
    the session's last one in flight."""
    transport._requests_in_flight -= 1
    if not transport._requests_in_flight:
        scope, timeout = transport.idle_scope, transport._idle_timeout
        if scope is not None and timeout is not None:
            scope.deadline = asyncio_time() + timeout  # anyio.current_time(), its lookup spared


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


def close_get_stream(manager: StreamableHTTPSessionManager, sid: str) -> bool:
    """Close the standalone GET stream of session ``sid`` (the session stays; its client may
    open the stream again with valid credentials, resuming with ``Last-Event-ID``); False when
    the session is gone. The transport's ``close_standalone_sse_stream`` is public; the
    session's transport is not."""
    try:
        transport = manager._server_instances.get(sid)
    except AttributeError as e:
        raise SdkChanged(f"StreamableHTTPSessionManager.{e.name}") from None
    if transport is None:
        return False
    transport.close_standalone_sse_stream()
    return True


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
