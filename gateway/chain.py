"""The call chain: an onion of steps around the dispatch to an upstream.

Each step is a small class in ``gateway/steps/`` with one async ``__call__(call, call_next)``.
A step denies by raising a ``GatewayError`` (or returning without calling ``call_next``).
The order lives in one list, ``gateway.assemble.chain_steps``: metrics outermost (when the
HTTP front counts calls), then audit, so both see every allow, deny and crash.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from opentelemetry import trace

from gateway.context import CallContext
from gateway.telemetry import exporting

# The result of the innermost endpoint: a CallToolResult, ReadResourceResult or GetPromptResult.
CallNext = Callable[[CallContext], Awaitable[Any]]


class Step(Protocol):
    """One step of the call chain."""

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any: ...


def build_chain(steps: Sequence[Step], endpoint: CallNext) -> CallNext:
    """Compose ``steps`` (outermost first) around ``endpoint``."""
    handler = endpoint
    for step in reversed(steps):
        handler = _bind(step, handler)
    return handler


_tracer = trace.get_tracer("symbi.gateway")


def _bind(step: Step, inner: CallNext) -> CallNext:
    # one span per step, nested like the onion, inside the request's span (gateway/telemetry.py),
    # while spans are exported
    name = f"symbi.step {getattr(step, 'span_name', type(step).__name__)}"

    async def run(call: CallContext) -> Any:
        if not exporting():  # nobody takes spans: skip making one per step per call
            return await step(call, inner)
        with _tracer.start_as_current_span(name, attributes={"mcp.method.name": call.kind}):
            return await step(call, inner)

    return run
