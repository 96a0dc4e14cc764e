"""OpenTelemetry traces: one trace per request, from the front through each step to the
upstream and back.

The MCP SDK already opens a SERVER span per inbound request (``mcp.method.name``,
``gen_ai.tool.name``..., continuing a caller's ``traceparent`` from ``_meta``) and a CLIENT
span per request to an upstream (injecting ``traceparent`` into that request's ``_meta``);
the chain adds one INTERNAL span per step (``gateway.chain``). What the gateway owns is the
SDK ``TracerProvider`` they report to, and where spans go:

* always: trace and span ids exist, so the audit record and every log line carry them;
* per-step spans only while some processor takes spans (``exporting``): with none they would
  be made and dropped on every call (~8 % of the event loop's time in the profile of issue 16);
* the SDK's own request spans are recorded only while some processor takes spans, or when the
  caller's trace is sampled (``_WhileExporting``): otherwise each is a non-recording span that
  still has its trace and span ids (recording them cost ~10 % of the event loop with checks
  off, issue 16); its ``traceparent`` then says "not sampled", which is true;
* ``[telemetry] otlp_endpoint``: spans are batched to an OTLP/HTTP collector (Jaeger, Tempo,
  the OpenTelemetry Collector...).

The provider is process-global (the SDK's spans find it through the global API), so it is
installed once with one fan-out processor; each gateway registers its exporters on it and
removes them when it closes (tests run several gateways in one process).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from contextvars import Token
from typing import Any

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, TraceState
from opentelemetry.util.types import Attributes

from gateway.compat import context_var, w3c_default_propagators
from gateway.config.model import Config

_logger = logging.getLogger("symbi.telemetry")
TRACER_NAME = "symbi.gateway"


# A caller's text in span names and attributes (a tool name, a resource URI: up to
# mcp.max_message_bytes) is cut to this before any exporter sees it: a 3 MB tool name was a
# 3 MB span name and attribute in every export. (OpenTelemetry's default is no limit.)
SPAN_NAME_CHARS = 256
SPAN_ATTRIBUTE_CHARS = 1024


class _Fanout(SpanProcessor):
    """The one processor on the global provider: hands spans to every registered one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: tuple[SpanProcessor, ...] = ()

    def add(self, proc: SpanProcessor) -> None:
        with self._lock:
            self._procs = (*self._procs, proc)

    def remove(self, proc: SpanProcessor) -> None:
        with self._lock:
            self._procs = tuple(p for p in self._procs if p is not proc)

    @property
    def active(self) -> bool:
        """Some processor takes spans (an exporter, a test's in-memory one)."""
        return bool(self._procs)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if len(span.name) > SPAN_NAME_CHARS:  # the SDK names a request's span after the caller's text
            span.update_name(f"{span.name[:SPAN_NAME_CHARS]}...")
        for p in self._procs:
            p.on_start(span, parent_context=parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for p in self._procs:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self._procs:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._procs)


class _WhileExporting(Sampler):
    """Record a span when some processor takes spans or the parent span is sampled; else
    drop it (the span still gets its ids, so audit records and log lines keep the trace id)."""

    def __init__(self, fan: _Fanout) -> None:
        self._fan = fan

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        state = parent.trace_state if parent.is_valid else None
        if self._fan.active or (parent.is_valid and parent.trace_flags.sampled):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return SamplingResult(Decision.DROP, None, state)

    def get_description(self) -> str:
        return "WhileExporting"


_install_lock = threading.Lock()
_fanout: _Fanout | None = None


def install(service_name: str = "symbi-gateway") -> _Fanout:
    """The global SDK provider (installed on first use; the first caller names the service)."""
    global _fanout
    with _install_lock:
        if _fanout is None:
            fan = _Fanout()
            provider = TracerProvider(
                resource=Resource.create({"service.name": service_name}),
                sampler=_WhileExporting(fan),
                span_limits=SpanLimits(max_attribute_length=SPAN_ATTRIBUTE_CHARS),
            )
            provider.add_span_processor(fan)
            trace.set_tracer_provider(provider)  # refused (logged by the API) if one is set already
            current = trace.get_tracer_provider()
            if current is not provider:
                if isinstance(current, TracerProvider):
                    current.add_span_processor(fan)  # the embedder's SDK provider: export through it too
                else:
                    _logger.warning(
                        "a non-SDK OpenTelemetry provider is installed: gateway traces are not exported"
                    )
            _fanout = fan
        return _fanout


def samples_while_exporting(provider: object) -> bool:
    """Whether ``provider`` is the gateway's (``_WhileExporting``: a span is recorded only while
    spans are exported or the caller's trace is sampled)."""
    return isinstance(provider, TracerProvider) and isinstance(provider.sampler, _WhileExporting)


def exporting() -> bool:
    """True when spans go somewhere. When not, the chain makes no per-step spans (the
    request's SDK span still gives the trace id the audit record and log lines carry)."""
    return _fanout is not None and _fanout.active


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


class Telemetry:
    """One gateway's tracing: its exporters on the shared provider, removed on ``close``."""

    def __init__(self, config: Config, *, extra: SpanProcessor | None = None) -> None:
        section = config.telemetry
        self._fan = install(section.service_name)
        self._procs: list[SpanProcessor] = []
        if section.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter: SpanExporter = OTLPSpanExporter(
                endpoint=section.otlp_endpoint,
                headers=dict(section.otlp_headers),
                timeout=section.otlp_timeout_s,
            )
            self._procs.append(BatchSpanProcessor(exporter, schedule_delay_millis=500))
            _logger.info("traces: exported over OTLP/HTTP to %s", section.otlp_endpoint)
        if extra is not None:
            self._procs.append(extra)
        for p in self._procs:
            self._fan.add(p)

    def flush(self, timeout_s: float = 10.0) -> bool:
        return all(p.force_flush(int(timeout_s * 1000)) for p in self._procs)

    def close(self) -> None:
        for p in self._procs:
            self._fan.remove(p)
            try:
                p.force_flush(5000)
                p.shutdown()
            except Exception as e:  # noqa: BLE001 - an unreachable collector must not stop the gateway's shutdown
                _logger.warning("traces: exporter shutdown failed: %s", e)
        self._procs.clear()


class _Current:
    """What a context says about tracing: its span's context, that span's ids in hex (None:
    no valid span), whether it carries baggage, whether its span was being recorded. A call's
    log lines, its audit record, its upstream hop and that request's ``traceparent`` all ask
    about the same context (contexts are immutable: a new one is attached for a new span), so
    the last one asked about is kept (held, so compared by identity). ``recording`` can only
    be stale one way: a recorded span that has ended since (an unrecorded one never starts)."""

    __slots__ = ("baggage", "context", "ids", "recording", "span")

    def __init__(self, context: Context) -> None:
        span = trace.get_current_span(context)
        self._set(context, span.get_span_context(), span.is_recording(), bool(baggage.get_all(context)))

    def _set(self, context: Context, span: trace.SpanContext, recording: bool, has_baggage: bool) -> None:
        self.context = context
        self.recording = recording
        self.span = span
        self.ids = (format(span.trace_id, "032x"), format(span.span_id, "016x")) if span.is_valid else None
        self.baggage = has_baggage

    @classmethod
    def known(cls, context: Context, span: trace.SpanContext, has_baggage: bool) -> _Current:
        """What ``__init__`` would find in ``context``, told by whoever made it (an unrecorded span)."""
        self = cls.__new__(cls)
        self._set(context, span, False, has_baggage)
        return self


_last: _Current | None = None
# OpenTelemetry's current context is this variable's (None: another runtime context, use the API)
_var = context_var()


def _current() -> _Current:
    global _last
    context = _var.get() if _var is not None else otel_context.get_current()
    last = _last
    if last is None or last.context is not context:
        last = _last = _Current(context)
    return last


def current_span_context() -> trace.SpanContext:
    """The current span's context (``trace.get_current_span().get_span_context()``)."""
    return _current().span


Entered = tuple[Token[Context], _Current]


def enter_unrecorded(span: trace.Span) -> Entered:
    """``otel_context.attach(trace.set_span_in_context(span))`` for a span that is not being
    recorded (the fast lanes' SERVER span), and what the new context says about tracing noted
    as ``_Current`` would find it: only the span differs from the context it was made from.
    End with ``leave``."""
    global _last
    ambient = _current()
    context = trace.set_span_in_context(span, ambient.context)
    token = _var.set(context) if _var is not None else otel_context.attach(context)
    _last = _Current.known(context, span.get_span_context(), ambient.baggage)
    return token, ambient


def leave(entered: Entered) -> None:
    """``otel_context.detach`` of what ``enter_unrecorded`` attached (a failure logged, not
    raised, as there); the context it was made from is current again, and known."""
    global _last
    token, ambient = entered
    try:
        if _var is None:
            otel_context.detach(token)
        else:
            _var.reset(token)
    except Exception:  # as opentelemetry.context.detach: logged, not raised
        _logger.exception("Failed to detach context")
        return
    _last = ambient


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None outside a trace."""
    return _current().ids


def current_span_recorded() -> bool:
    """Whether the current span is being recorded (or was, when it was last asked about)."""
    return _current().recording


# the global propagator checked last, and whether it is OpenTelemetry's default W3C pair
_textmap: tuple[object, bool] = (None, False)


def inject_trace(carrier: dict[str, Any]) -> None:
    """``opentelemetry.propagate.inject(carrier)`` into a dict: the current context as the
    global propagator writes it. With the default propagators (W3C trace context, then W3C
    baggage) and no baggage, the ``traceparent`` / ``tracestate`` they would set are written
    here without their layers; any other propagator, or baggage, goes through ``inject``."""
    global _textmap
    textmap = propagate.get_global_textmap()
    if _textmap[0] is not textmap:
        _textmap = (textmap, w3c_default_propagators(textmap))
    current = _current()
    if not _textmap[1] or current.baggage:
        propagate.inject(carrier)
        return
    ctx = current.span
    if ctx == trace.INVALID_SPAN_CONTEXT:  # as TraceContextTextMapPropagator
        return
    trace_hex, span_hex = current.ids or (format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
    carrier["traceparent"] = f"00-{trace_hex}-{span_hex}-{ctx.trace_flags:02x}"
    if ctx.trace_state:
        carrier["tracestate"] = ctx.trace_state.to_header()
