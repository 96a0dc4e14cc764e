"""Validate a tool result's structuredContent against the tool's approved outputSchema.

The outputSchema is part of the definition that was pinned and approved; the MCP spec says a
server MUST return structured results that conform to it and a client SHOULD check. A client
that does not would take whatever the upstream sends, so the gateway checks: a result (not an
error result) of a tool that declares an outputSchema must carry ``structuredContent`` that
is an object and validates. What the upstream sent is checked, before the policy's result
conditions (redaction, size cap) change it: this step runs inside ``PolicyStep``.
"""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import SchemaError
from mcp.types import CallToolResult
from referencing.exceptions import Unresolvable

from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.errors import ResultInvalid
from gateway.steps.schemas import compile_schema, unresolved

MAX_REASONS = 10


class ValidateResult:
    """Refuses a tools/call result that breaks the tool's outputSchema (``ResultInvalid``)."""

    def __init__(self) -> None:
        # by the outputSchema object itself (held, so its id is no other's while kept), as
        # ValidateArguments keeps its validators
        self._cache: dict[int, tuple[Any, Any]] = {}

    def _validator(self, raw: Any) -> Any:
        hit = self._cache.get(id(raw))
        if hit is not None and hit[0] is raw:
            return hit[1]
        v = compile_schema(raw)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[id(raw)] = (raw, v)
        return v

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        result = await call_next(call)
        tool = call.tool
        if tool is None or call.kind != "tools/call":
            return result
        raw = tool.definition.get("outputSchema")  # the one test a tool without one costs
        if raw is None or not isinstance(result, CallToolResult) or result.is_error:
            return result
        where = f"the result of {call.target!r}"
        if not isinstance(raw, dict):
            raise ResultInvalid(f"{where}: the tool's outputSchema is not an object")
        try:
            validator = self._validator(raw)
        except SchemaError as e:
            raise ResultInvalid(f"{where}: the tool's outputSchema is invalid: {e.message}") from None
        content = result.structured_content
        if not isinstance(content, dict):
            what = "no structuredContent" if content is None else "structuredContent that is not an object"
            raise ResultInvalid(f"{where} has {what}, and the tool declares an outputSchema")
        try:
            errors = sorted(validator.iter_errors(content), key=lambda e: list(e.absolute_path))
        except Unresolvable as e:
            raise ResultInvalid(f"{where}: the tool's outputSchema has {unresolved(e)}") from None
        if errors:
            # the path and the schema keyword only: a message can quote the value
            reasons = [
                f"structuredContent{_path(e.absolute_path)}: fails the outputSchema's {e.validator!r}"
                for e in errors[:MAX_REASONS]
            ]
            raise ResultInvalid(
                f"{where} does not match the tool's outputSchema: {reasons[0]}", reasons=reasons
            )
        return result


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
