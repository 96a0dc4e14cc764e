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
    """Compose ``steps`` (outermost first) around ``endpoint``.

    Two compositions of the same steps: one makes a span per step (nested like the onion,
    inside the request's span, gateway/telemetry.py), the other calls each step directly
    (no wrapper coroutine per step). Each call takes the first while spans are exported."""
    traced = plain = endpoint
    for step in reversed(steps):
        traced = _traced(step, traced)
        plain = _plain(step, plain)

    def run(call: CallContext) -> Awaitable[Any]:
        return (traced if exporting() else plain)(call)

    return run


_tracer = trace.get_tracer("symbi.gateway")


def _plain(step: Step, inner: CallNext) -> CallNext:
    def run(call: CallContext) -> Awaitable[Any]:
        return step(call, inner)

    return run


def _traced(step: Step, inner: CallNext) -> CallNext:
    name = f"symbi.step {getattr(step, 'span_name', type(step).__name__)}"

    async def run(call: CallContext) -> Any:
        with _tracer.start_as_current_span(name, attributes={"mcp.method.name": call.kind}):
            return await step(call, inner)

    return run
