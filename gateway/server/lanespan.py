"""The SDK's SERVER span of a fast-lane ``tools/call``, as its middleware makes it while the
span is not recorded (gateway/telemetry.py: nothing exports, the caller's trace not sampled),
without its layers; the SDK's middleware itself otherwise."""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from gateway.compat import UnsampledSpans, unsampled_spans
from gateway.telemetry import (
    current_span_context,
    enter_unrecorded,
    exporting,
    leave,
    samples_while_exporting,
)

SpanMiddleware = Callable[[ServerRequestContext[Any, Any], CallNext], Awaitable[HandlerResult]]


async def server_span(
    sdk: SpanMiddleware, ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """The SDK's SERVER span middleware (``sdk``) as it behaves when the span is not recorded,
    without its layers of context managers: the same span from the same tracer (its ids: the
    trace id the audit record and log lines carry, the caller's ``traceparent`` as parent),
    current while the call runs. Only under the gateway's own sampler (gateway/telemetry.py),
    with nothing exporting and the parent not sampled, is it sure not to be recorded; otherwise
    the SDK's middleware runs."""
    lane = _lane_tracer(trace.get_tracer_provider())
    if lane is None or exporting():
        return await sdk(ctx, call_next)
    meta = ctx.meta
    parent = _trace_parent(meta) if meta else None
    # no parent from _meta: the ambient context's span, as start_span(context=None) takes it
    parent_span = (
        trace.get_current_span(parent).get_span_context() if parent is not None else current_span_context()
    )
    if parent_span.trace_flags.sampled:
        return await sdk(ctx, call_next)
    tracer, unsampled = lane
    # the dropped span start_span would make, made directly (gateway.compat: when it can be)
    span = unsampled(parent_span) if unsampled is not None else None
    if span is None:
        name = ctx.params.get("name") if ctx.params else None
        span = tracer.start_span(
            f"{ctx.method} {name}" if isinstance(name, str) and name else ctx.method,  # the SDK's name
            context=parent,
            kind=trace.SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():  # not with this sampler; should it change, the SDK's span it is
            span.end()
            return await sdk(ctx, call_next)
    entered = enter_unrecorded(span)
    try:
        return await call_next(ctx)
    finally:
        leave(entered)


# the provider asked about last, held weakly (tests install several), and what the lane uses of
# it: None when it is not the gateway's (its sampler), else its tracer and span maker
_Lane = tuple[trace.Tracer, UnsampledSpans | None]
_last_tracer: tuple[weakref.ref[object], _Lane | None] | None = None


def _lane_tracer(provider: object) -> _Lane | None:
    """The tracer the SDK's middleware uses (``mcp-python-sdk``) from ``provider`` and its
    unsampled-span maker, when ``provider`` samples as the gateway's does (else None)."""
    global _last_tracer
    last = _last_tracer
    if last is None or last[0]() is not provider:
        lane: _Lane | None = None
        if samples_while_exporting(provider):
            assert isinstance(provider, TracerProvider)
            tracer = provider.get_tracer("mcp-python-sdk")
            lane = (tracer, unsampled_spans(tracer))
        last = _last_tracer = (weakref.ref(provider), lane)
    return last[1]


def _trace_parent(meta: Any) -> otel_context.Context | None:
    """The caller's trace context from ``_meta`` as the SDK reads it: None when absent,
    malformed or without a valid ``traceparent`` (the ambient context is the parent then)."""
    if not meta:
        return None
    try:
        ctx = propagate.extract(meta)
    except (ValueError, TypeError):
        return None
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None
