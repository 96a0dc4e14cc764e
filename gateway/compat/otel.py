"""Reach-ins into OpenTelemetry's SDK and API (the SERVER span of the fast lanes, trace
propagation)."""

from __future__ import annotations

import functools
from typing import Any


def w3c_default_propagators(textmap: object) -> bool:
    """Whether ``textmap`` (the global propagator) is exactly OpenTelemetry's default: a
    ``CompositePropagator`` (its ``_propagators``) of W3C trace context, then W3C baggage.
    ``gateway.telemetry.inject_trace`` writes their ``traceparent`` itself only then."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = getattr(textmap, "_propagators", None)
    return (
        type(textmap) is CompositePropagator
        and isinstance(parts, list | tuple)
        and [type(p) for p in parts] == [TraceContextTextMapPropagator, W3CBaggagePropagator]
    )


def unsampled_span(tracer: object, parent: Any) -> Any:
    """The span an SDK ``Tracer.start_span`` makes when its sampler drops it (``parent``: the
    parent's ``SpanContext``, possibly invalid): a ``NonRecordingSpan`` in ``parent``'s trace
    (its trace state, its random-trace-id flag) or a new trace, with a new span id, both from
    the tracer's ``id_generator``; without the sampler's call and ``start_span``'s layers. The
    caller knows the sampler drops it (the gateway's, while nothing exports and the parent is
    not sampled). None when ``tracer`` would do more than that: not the SDK's, disabled by its
    configurator (``_tracer_config``), or counting spans (``_tracer_metrics``)."""
    Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags = _otel_sdk()
    if not (
        type(tracer) is Tracer
        and isinstance(getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics)
        and getattr(getattr(tracer, "_tracer_config", None), "is_enabled", None) is True
    ):
        return None
    ids = tracer.id_generator  # type: ignore[attr-defined]
    if parent.is_valid:
        trace_id, random, state = parent.trace_id, parent.trace_flags.random_trace_id, parent.trace_state
    else:
        trace_id, random, state = ids.generate_trace_id(), ids.is_trace_id_random(), None
    flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID if random else TraceFlags.DEFAULT)
    return NonRecordingSpan(
        SpanContext(trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags, trace_state=state)
    )


@functools.cache
def _otel_sdk() -> tuple[Any, ...]:
    """The OpenTelemetry SDK classes ``unsampled_span`` uses, imported once (on first use)."""
    from opentelemetry.sdk.trace import Tracer
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    return Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags
