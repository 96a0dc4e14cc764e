"""Every use of a private attribute of the MCP SDK, asyncio, anyio, OpenTelemetry or docker, in
one package.

The gateway needs a few things the libraries do not (yet) offer publicly. Each reach-in is
one function here, with a test in ``tests/test_compat.py`` that fails with a clear message
naming the function when a library upgrade removes what it uses; nothing else in
``gateway/`` touches a private name of a library. Written against mcp 2.x (see
``reference/`` for the measured API). By library part: ``sdk`` (sessions, middleware,
dispatcher, the stdio client's helpers), ``http`` (the streamable-HTTP manager and transport),
``httpclient`` (the streamable-HTTP client transport's parsing), ``streams`` (asyncio / anyio
streams and pipes), ``otel`` (OpenTelemetry); every name is
imported from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.compat.http import (
        HOLD_FREE,
        HOLD_HELD,
        HOLD_REFUSED,
        RequestStream,
        close_get_stream,
        close_http_session,
        http_session_counts,
        http_session_transport,
        open_http_sessions,
        transport_admits,
        transport_close_stream,
        transport_hold,
        transport_holds_stream,
        transport_open_stream,
        transport_priming_event,
        transport_release,
        transport_serving,
        transport_store_event,
        transport_write,
    )
    from gateway.compat.httpclient import screened_http_client
    from gateway.compat.otel import (
        UnsampledSpans,
        context_var,
        unsampled_span,
        unsampled_spans,
        w3c_default_propagators,
    )
    from gateway.compat.sdk import (
        clamp_inbound_ttl,
        connection_of,
        create_context_streams,
        drain_stdout,
        executable_command,
        is_sdk_span_middleware,
        later_revision_fields,
        negotiate_auto,
        parse_stdio_line,
        related_notify,
        related_request,
        stamp_requests,
        start_stdio_process,
        stop_stdio_process,
    )
    from gateway.compat.streams import (
        asyncio_cancel_scope,
        asyncio_time,
        process_stdin_writer,
        process_stdout_reader,
        raw_socket,
        receiver_waits_idle,
        stream_reader_head,
        tap_lines,
        tap_process_stdout,
    )
    from gateway.errors import SdkChanged

# Each name is imported from its part on first use (PEP 562), not all at once: ``sdk``,
# ``http`` and ``httpclient`` import the MCP SDK (~1 s), which admin commands that only
# need ``streams`` (the sandbox's ``raw_socket``) must not pay at start.
_PARTS: dict[str, str] = {
    "HOLD_FREE": "gateway.compat.http",
    "HOLD_HELD": "gateway.compat.http",
    "HOLD_REFUSED": "gateway.compat.http",
    "RequestStream": "gateway.compat.http",
    "SdkChanged": "gateway.errors",
    "UnsampledSpans": "gateway.compat.otel",
    "asyncio_cancel_scope": "gateway.compat.streams",
    "asyncio_time": "gateway.compat.streams",
    "clamp_inbound_ttl": "gateway.compat.sdk",
    "close_get_stream": "gateway.compat.http",
    "close_http_session": "gateway.compat.http",
    "connection_of": "gateway.compat.sdk",
    "context_var": "gateway.compat.otel",
    "create_context_streams": "gateway.compat.sdk",
    "drain_stdout": "gateway.compat.sdk",
    "executable_command": "gateway.compat.sdk",
    "http_session_counts": "gateway.compat.http",
    "http_session_transport": "gateway.compat.http",
    "is_sdk_span_middleware": "gateway.compat.sdk",
    "later_revision_fields": "gateway.compat.sdk",
    "negotiate_auto": "gateway.compat.sdk",
    "open_http_sessions": "gateway.compat.http",
    "parse_stdio_line": "gateway.compat.sdk",
    "process_stdin_writer": "gateway.compat.streams",
    "process_stdout_reader": "gateway.compat.streams",
    "raw_socket": "gateway.compat.streams",
    "receiver_waits_idle": "gateway.compat.streams",
    "related_notify": "gateway.compat.sdk",
    "related_request": "gateway.compat.sdk",
    "screened_http_client": "gateway.compat.httpclient",
    "stamp_requests": "gateway.compat.sdk",
    "start_stdio_process": "gateway.compat.sdk",
    "stop_stdio_process": "gateway.compat.sdk",
    "stream_reader_head": "gateway.compat.streams",
    "tap_lines": "gateway.compat.streams",
    "tap_process_stdout": "gateway.compat.streams",
    "transport_admits": "gateway.compat.http",
    "transport_close_stream": "gateway.compat.http",
    "transport_hold": "gateway.compat.http",
    "transport_holds_stream": "gateway.compat.http",
    "transport_open_stream": "gateway.compat.http",
    "transport_priming_event": "gateway.compat.http",
    "transport_release": "gateway.compat.http",
    "transport_serving": "gateway.compat.http",
    "transport_store_event": "gateway.compat.http",
    "transport_write": "gateway.compat.http",
    "unsampled_span": "gateway.compat.otel",
    "unsampled_spans": "gateway.compat.otel",
    "w3c_default_propagators": "gateway.compat.otel",
}


def __getattr__(name: str) -> object:
    part = _PARTS.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(part), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PARTS})  # the names not loaded yet too


__all__ = [
    "HOLD_FREE",
    "HOLD_HELD",
    "HOLD_REFUSED",
    "RequestStream",
    "SdkChanged",
    "UnsampledSpans",
    "asyncio_cancel_scope",
    "asyncio_time",
    "clamp_inbound_ttl",
    "close_get_stream",
    "close_http_session",
    "connection_of",
    "context_var",
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
    "screened_http_client",
    "stamp_requests",
    "start_stdio_process",
    "stop_stdio_process",
    "stream_reader_head",
    "tap_lines",
    "tap_process_stdout",
    "transport_admits",
    "transport_close_stream",
    "transport_hold",
    "transport_holds_stream",
    "transport_open_stream",
    "transport_priming_event",
    "transport_release",
    "transport_serving",
    "transport_store_event",
    "transport_write",
    "unsampled_span",
    "unsampled_spans",
    "w3c_default_propagators",
]
