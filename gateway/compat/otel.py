"""Reach-ins into OpenTelemetry's SDK and API (the SERVER span of the fast lanes, trace
propagation)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
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
    make = unsampled_spans(tracer)
    return make(parent) if make is not None else None


UnsampledSpans = Callable[[Any], Any]


def unsampled_spans(tracer: object) -> UnsampledSpans | None:
    """``unsampled_span`` for one tracer, its lasting checks made once (the SDK's ``Tracer``, its
    span metrics off: both fixed when it is made): None when they fail. The function made
    still asks the configurator's answer (``_tracer_config``, replaced when the configurator
    changes) on every span, and returns None while the tracer is disabled."""
    Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags = _otel_sdk()
    if type(tracer) is not Tracer or not isinstance(
        getattr(tracer, "_tracer_metrics", None), NoOpTracerMetrics
    ):
        return None
    random_flags, default_flags = TraceFlags(TraceFlags.RANDOM_TRACE_ID), TraceFlags(TraceFlags.DEFAULT)

    def make(parent: Any) -> Any:
        try:
            if tracer._tracer_config.is_enabled is not True:  # type: ignore[attr-defined]
                return None
        except AttributeError:
            return None
        ids = tracer.id_generator  # type: ignore[attr-defined]
        if parent.is_valid:
            trace_id, random, state = parent.trace_id, parent.trace_flags.random_trace_id, parent.trace_state
        else:
            trace_id, random, state = ids.generate_trace_id(), ids.is_trace_id_random(), None
        flags = random_flags if random else default_flags
        return NonRecordingSpan(
            SpanContext(
                trace_id, ids.generate_span_id(), is_remote=False, trace_flags=flags, trace_state=state
            )
        )

    return make


def context_var() -> ContextVar[Any] | None:
    """The ``ContextVar`` that holds OpenTelemetry's current context (``_RUNTIME_CONTEXT``'s
    ``_current_context``) when the runtime context is the default ``ContextVarsRuntimeContext``,
    whose ``get_current`` / ``attach`` / ``detach`` are exactly its ``get`` / ``set`` / ``reset``;
    None for another runtime context (``OTEL_PYTHON_CONTEXT``): then the API's functions."""
    from opentelemetry import context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    runtime = getattr(context, "_RUNTIME_CONTEXT", None)
    if type(runtime) is not ContextVarsRuntimeContext:
        return None
    var = getattr(runtime, "_current_context", None)
    return var if isinstance(var, ContextVar) else None


@functools.cache
def _otel_sdk() -> tuple[Any, ...]:
    """The OpenTelemetry SDK classes ``unsampled_span`` uses, imported once (on first use)."""
    from opentelemetry.sdk.trace import Tracer
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    return Tracer, NoOpTracerMetrics, NonRecordingSpan, SpanContext, TraceFlags
