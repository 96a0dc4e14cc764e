"""Reach-ins into the MCP SDK's sessions, middleware, dispatcher and stdio client helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    _stop_server_process,
)
from mcp.server._otel import OpenTelemetryMiddleware  # the SDK's SERVER span (the fast lanes' light twin)
from mcp.server.session import ServerSession
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter
from mcp_types import RequestId

from gateway.errors import SdkChanged

__all__ = ["create_context_streams", "negotiate_auto"]

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


def is_sdk_span_middleware(middleware: object) -> bool:
    """Whether ``middleware`` (of ``Server.middleware``) is the SDK's OpenTelemetry SERVER-span
    middleware, which the fast lanes run as a lighter twin while no span is recorded."""
    return isinstance(middleware, OpenTelemetryMiddleware)


# The SDK's stdio process helpers (platform quirks, the grace period, tree kill), used by
# gateway.upstream.stdio's bounded transport: private functions of ``mcp.client.stdio``.
executable_command = _get_executable_command
start_stdio_process = _create_platform_compatible_process
drain_stdout = _drain_stdout
stop_stdio_process = _stop_server_process


def parse_stdio_line(line: str) -> SessionMessage | Exception:
    """One stdout line as the SDK's ``mcp.client.stdio._parse_line`` parses it (the same
    adapter and options; tests/test_compat.py holds them equal), a parse failure returned as a
    value, without the traceback ``_parse_line`` logs for every such line: a server that prints
    its banner or debug output to stdout would fill the log. gateway.upstream.stdio logs one
    line naming the upstream instead."""
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


# What ``ClientSession.send_request`` does to a raw result before validating it, reused by the
# fast lane of tools/call so it accepts and refuses exactly what the SDK's path does: floor a
# negative ``ttlMs``, and the result keys of protocol revisions newer than the negotiated one.
clamp_inbound_ttl = _clamp_inbound_ttl
later_revision_fields = _later_revision_fields
