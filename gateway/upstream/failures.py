"""What an upstream's failure becomes: the gateway error a failed request raises, and the
short description of a failure kept as ``last_error`` (events, the log, ``/readyz``)."""

from __future__ import annotations

from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.policy.redact import excerpt
from gateway.upstream.bounded_http import OVERSIZED_MARK


def upstream_error(name: str, e: MCPError) -> UpstreamError:
    code = e.error.code if hasattr(e, "error") else None
    if code == -32001 or "timed out" in str(e).lower():
        return UpstreamTimeout(f"upstream {name!r} timed out: {e}")
    if code == -32000 or "closed" in str(e).lower():
        return UpstreamUnavailable(f"upstream {name!r} connection closed: {e}")
    if code == types.PARSE_ERROR and OVERSIZED_MARK in str(e):
        # our own refusal of an oversized HTTP body (bounded_http), not the upstream's answer
        return UpstreamError(f"upstream {name!r} sent a message over mcp.max_message_bytes: refused")
    return UpstreamError(f"upstream {name!r} returned an error: {e}", mcp_error=e)


def describe(e: BaseException) -> str:
    """For ``last_error``: the upstream.down / misbehaved events, the log, /readyz. An error's
    text may be the upstream's own (an initialize refused with a megabyte of message, again at
    every restart): an excerpt of it."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return excerpt(f"{type(e).__name__}: {e}") if str(e) else type(e).__name__
