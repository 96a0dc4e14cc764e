"""The one place where gateway errors become MCP results (used as decorators by the front).

- ``tools/call``: every ``GatewayError`` (unknown tool, bad arguments, deny, upstream down,
  sandbox failure...) becomes ``CallToolResult(isError=True)`` with a readable text and
  ``_meta["symbi/error"] = {"code", "reasons"}`` so the model sees why; an upstream's
  own JSON-RPC error is passed on the same way. The connection never breaks.
- ``_meta["symbi/..."]`` keys are the gateway's alone: ``without_gateway_meta`` drops the ones
  an upstream put in its result or its blocks (a forged ``symbi/error`` denial or
  ``symbi/verification``).
- ``resources/read``, ``prompts/get``, ``completion/complete``: a ``GatewayError`` becomes a
  JSON-RPC error (``MCPError``): -32602 for unknown names and denials, -32603 otherwise.
- Anything else (a bug) is logged with its traceback and reported as an internal error:
  fail closed, never a crashed connection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.errors import GatewayError, UpstreamError, is_denial

P = ParamSpec("P")
R = TypeVar("R")

_logger = logging.getLogger("symbi.boundary")


# the prefix of the gateway's own _meta keys (symbi/error, symbi/verification, ...)
GATEWAY_META_PREFIX = "symbi/"


def _gateway_key(key: object) -> bool:
    return isinstance(key, str) and key[: len(GATEWAY_META_PREFIX)].lower() == GATEWAY_META_PREFIX


def without_gateway_meta(result: R) -> R:
    """``result`` (an upstream's) without the ``_meta`` keys only the gateway may set, in any
    case: a client must be able to trust ``symbi/error`` and ``symbi/verification``. Looked at:
    the result's own ``_meta`` (where the gateway puts its keys) and each block's in its lists
    (``content``, ``contents``, ``messages``, with the resource or content a block carries: a
    client reading ``symbi/`` keys per block must not find the upstream's there); no deeper walk."""
    update: dict[str, object] = {}
    fields = _fields(result)
    meta = fields.get("meta")
    if meta and any(map(_gateway_key, meta)):
        update["meta"] = {k: v for k, v in meta.items() if not _gateway_key(k)} or None
    for field in _BLOCK_LISTS:
        blocks = fields.get(field)
        if isinstance(blocks, list) and any(map(_forges, blocks)):
            update[field] = [_block_without(b) for b in blocks]
    if not update:
        return result
    return result.model_copy(update=update)  # type: ignore[attr-defined, no-any-return]


_BLOCK_LISTS = ("content", "contents", "messages")  # tools/call, resources/read, prompts/get
_INNER = ("resource", "content")  # an embedded resource's contents, a prompt message's block


def _fields(block: object) -> dict[str, Any]:
    """A block's fields as set (a pydantic model keeps them in ``__dict__``): read there, not by
    ``getattr``, which for a field the block's type lacks goes through pydantic's slow miss."""
    fields = getattr(block, "__dict__", None)
    return fields if isinstance(fields, dict) else {}


def _forges(block: object) -> bool:
    fields = _fields(block)
    meta = fields.get("meta")
    if meta and isinstance(meta, dict) and any(map(_gateway_key, meta)):
        return True
    return any(_forges(inner) for f in _INNER if (inner := fields.get(f)) is not None)


def _block_without(block: object) -> object:
    if not _forges(block):
        return block
    fields = _fields(block)
    update: dict[str, object] = {}
    meta = fields.get("meta")
    if isinstance(meta, dict) and any(map(_gateway_key, meta)):
        update["meta"] = {k: v for k, v in meta.items() if not _gateway_key(k)} or None
    for f in _INNER:
        inner = fields.get(f)
        if inner is not None and _forges(inner):
            update[f] = _block_without(inner)
    return block.model_copy(update=update)  # type: ignore[attr-defined]


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
        if isinstance(err, UpstreamError) and isinstance(err.mcp_error, MCPError):
            return err.mcp_error
        code = types.INVALID_PARAMS if is_denial(err) else types.INTERNAL_ERROR
        return MCPError(code=code, message=err.message, data={"code": err.code, "reasons": err.reasons})
    _logger.error("internal error", exc_info=err)
    return MCPError(code=types.INTERNAL_ERROR, message="symbi: internal gateway error")


def as_tool_result(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R | types.CallToolResult]]:
    """``tools/call``: every failure becomes ``CallToolResult(isError=True)``.

    An upstream's own JSON-RPC error is passed on as a JSON-RPC error (the client sees what
    the server said, as the policy's result conditions let it: ``gateway.policy.results``).
    """

    @functools.wraps(fn)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> R | types.CallToolResult:
        try:
            return await fn(*args, **kwargs)
        except UpstreamError as e:
            if isinstance(e.mcp_error, MCPError):
                raise e.mcp_error from None
            return error_result(e)
        except Exception as e:  # noqa: BLE001 - the boundary: every failure becomes isError
            return error_result(e)

    return handler


def as_protocol_error(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Every other request: a failure becomes a JSON-RPC error (``protocol_error``)."""

    @functools.wraps(fn)
    async def handler(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the boundary: every failure becomes a JSON-RPC error
            raise protocol_error(e) from None

    return handler
