"""Validate tool arguments against the tool's inputSchema (jsonschema) before anything else sees them."""

from __future__ import annotations

from typing import Any

from jsonschema.exceptions import SchemaError
from referencing.exceptions import Unresolvable

from gateway.chain import CallNext
from gateway.context import CallContext, ToolInfo
from gateway.errors import ArgumentsInvalid
from gateway.jsonlimits import too_large
from gateway.steps.argcheck import DRAFTS, Check, compile_check
from gateway.steps.schemas import compile_schema, unresolved


class ValidateArguments:
    """Refuses a call whose arguments (a tool's, a prompt's) are nested deeper than
    ``MAX_DEPTH``, have a key longer than ``MAX_KEY_CHARS``, hold more than ``max_members``
    keys and items in all (the config's ``mcp.max_argument_members``) or a NaN or an infinity
    (``jsonlimits.NONFINITE``: not JSON, and sent upstream as null), or a tool call's that do
    not match the tool's inputSchema; names the path."""

    def __init__(self, max_members: int | None = None) -> None:
        self._cache: dict[int, Any] = {}
        self._max_members = max_members

    def _validator(self, tool: ToolInfo) -> tuple[Any, Check | None]:
        """The tool's validator and, for the plainest schemas, its quick check
        (``gateway.steps.argcheck``), made once per schema object. Looked up by the
        definition's ``inputSchema`` object itself (held, so its id is no other's while kept):
        ``input_schema`` is a function of it (itself if a mapping, else a new
        ``{"type": "object"}`` per ask, which kept nothing), and its ABC check costs calls."""
        raw = tool.definition.get("inputSchema")
        key = id(raw)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1], hit[2]
        schema: Any = tool.input_schema
        v = compile_schema(schema)
        quick = compile_check(schema) if type(v) in DRAFTS else None
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = (raw, v, quick)
        return v, quick

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        # every kind's arguments (a prompt's too) are redacted and handed to the policy
        large = (
            too_large(call.arguments, max_members=self._max_members, finite=True) if call.arguments else None
        )
        if large is not None:
            raise ArgumentsInvalid(
                f"invalid arguments for {call.target!r}: arguments{large.path}: {large.problem}"
            )
        if call.kind == "tools/call" and call.tool is not None:
            try:
                validator, quick = self._validator(call.tool)
            except SchemaError as e:
                raise ArgumentsInvalid(
                    f"tool {call.target!r} has an invalid inputSchema: {e.message}"
                ) from None
            if quick is not None and quick(call.arguments):  # surely valid: jsonschema would agree
                return await call_next(call)
            try:
                errors = sorted(validator.iter_errors(call.arguments), key=lambda e: list(e.absolute_path))
            except Unresolvable as e:
                raise ArgumentsInvalid(
                    f"tool {call.target!r} has an inputSchema with {unresolved(e)}"
                ) from None
            if errors:
                reasons = [f"arguments{_path(e.absolute_path)}: {e.message}" for e in errors[:10]]
                raise ArgumentsInvalid(
                    f"invalid arguments for {call.target!r}: {reasons[0]}", reasons=reasons
                )
        return await call_next(call)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
