"""The one place where gateway errors become MCP results.

- ``tools/call``: every ``GatewayError`` (unknown tool, bad arguments, deny, upstream down,
  sandbox failure...) becomes ``CallToolResult(isError=True)`` with a readable text and
  ``_meta["symbi/error"] = {"code", "reasons"}`` so the model sees why; an upstream's
  own JSON-RPC error is passed on the same way. The connection never breaks.
- ``resources/read``, ``prompts/get``, ``completion/complete``: a ``GatewayError`` becomes a
  JSON-RPC error (``MCPError``): -32602 for unknown names and denials, -32603 otherwise.
- Anything else (a bug) is logged with its traceback and reported as an internal error:
  fail closed, never a crashed connection.
"""

from __future__ import annotations

import logging

from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.errors import (
    ArgumentsInvalid,
    CatalogError,
    GatewayError,
    PolicyDenied,
    VerificationDenied,
)

_logger = logging.getLogger("symbi.boundary")


def error_result(err: BaseException) -> types.CallToolResult:
    if isinstance(err, GatewayError):
        code, reasons, text = err.code, err.reasons, err.message
        extra = [r for r in reasons if r not in text]
        if extra:
            text = text + "\n" + "\n".join(f"- {r}" for r in extra)
    else:
        _logger.error("internal error in the call chain", exc_info=err)
        code, reasons, text = "internal_error", ["internal gateway error"], "symbi: internal gateway error"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
        _meta={"symbi/error": {"code": code, "reasons": list(reasons)}},
    )


def protocol_error(err: BaseException) -> MCPError:
    if isinstance(err, MCPError):
        return err
    if isinstance(err, GatewayError):
        upstream_err = getattr(err, "mcp_error", None)
        if isinstance(upstream_err, MCPError):
            return upstream_err
        code = (
            types.INVALID_PARAMS
            if isinstance(err, CatalogError | PolicyDenied | VerificationDenied | ArgumentsInvalid)
            else types.INTERNAL_ERROR
        )
        return MCPError(code=code, message=err.message, data={"code": err.code, "reasons": err.reasons})
    _logger.error("internal error", exc_info=err)
    return MCPError(code=types.INTERNAL_ERROR, message="symbi: internal gateway error")
