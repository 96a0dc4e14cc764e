"""Every use of a private attribute of the MCP SDK, asyncio or docker, in one module.

The gateway needs a few things the libraries do not (yet) offer publicly. Each reach-in is
one function here, with a test in ``tests/test_compat.py`` that fails with a clear message
naming the function when a library upgrade removes what it uses; nothing else in
``gateway/`` touches a private name of a library. Written against mcp 2.x (see
``reference/`` for the measured API).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

# Private modules: ``negotiate_auto`` is the SDK's connect-time policy for ``mode="auto"``
# (probe ``server/discover``, adopt a 2026 version, else ``initialize``); the context streams
# carry contextvars across the stdio transport's tasks as the SDK's own ``stdio_server`` does.
from mcp.client._probe import negotiate_auto
from mcp.client.session import ClientSession
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared._context_streams import create_context_streams

from gateway.errors import SdkChanged

__all__ = [
    "SdkChanged",
    "connection_of",
    "create_context_streams",
    "http_session_counts",
    "negotiate_auto",
    "open_http_sessions",
    "raw_socket",
    "stamp_requests",
    "stream_reader_head",
]

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


def raw_socket(sock: Any) -> Any:
    """The socket under docker's ``attach_socket`` result (a ``SocketIO`` wrapping ``_sock``)."""
    return getattr(sock, "_sock", sock)
