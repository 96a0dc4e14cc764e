"""Prometheus metrics: a gateway component, one registry per HTTP app, fed by events and the chain.

``GatewayMetrics`` owns a private ``CollectorRegistry`` (so two apps in one process, as in
the tests, never share counters). ``gateway.assemble.make_gateway(config, metrics=...)``
wires it in; two feeders fill it:

* ``MetricsSink`` wraps the gateway's ``EventSink`` and counts what events say: upstream
  up/down/restarts, verification failures and drift, sandbox runs, every audit event by type.
* ``gateway.steps.metrics.MetricsStep`` records each tool call: outcome, latency, decision.

Event types counted (anything else only counts as an audit event, by type):
``upstream.up`` / ``upstream.down`` (details ``upstream``, ``restarts``), ``tool.drift``
(``upstream``), ``tool.verification`` (``upstream``, ``status``, ``blocked``: a tool the verdict
blocks, ``gateway.context.is_blocked``, counts as a verification failure).
Sandbox runs by tier are counted by ``MetricsStep`` from ``CallContext.sandbox_tier``.
Components with their own timings call ``observe_policy(seconds)`` and
``observe_audit_write(seconds)``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.events import Event, EventSink, Recording

_logger = logging.getLogger("symbi.metrics")

__all__ = ["CONTENT_TYPE_LATEST", "Children", "GatewayMetrics", "MetricsSink", "RecentCall", "RecentCalls"]

MetricT = TypeVar("MetricT", Counter, Gauge, Histogram)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Children(Generic[MetricT]):
    """The children of one labelled metric by their label values, each looked up once.

    The library's ``labels`` converts and checks every value and takes the metric's lock on
    every call (about ten function calls); every tool call counts a few fixed label sets. The
    child is the one ``labels`` gives (the same object, the same series). A label set the
    metric drops must be forgotten here too (``forget``), or its child would count unseen."""

    __slots__ = ("_made", "_metric")

    def __init__(self, metric: MetricT) -> None:
        self._metric: MetricT = metric
        self._made: dict[tuple[str, ...], MetricT] = {}

    def __call__(self, *values: str) -> MetricT:
        child = self._made.get(values)
        if child is None:
            child = self._made[values] = self._metric.labels(*values)
        return child

    def forget(self, values: tuple[str, ...]) -> None:
        self._made.pop(values, None)


class GatewayMetrics:
    """All gateway metrics, in one registry. The per-call feeders take the labelled children
    through the ``*_of`` lookups (``Children``)."""

    def __init__(self, recent_calls: int = 500) -> None:
        # the dashboard's "recent decisions" (a bounded ring buffer, fed with the counters)
        self.recent = RecentCalls(recent_calls)
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._add_call_metrics(r)
        self._add_component_metrics(r)
        self._add_business_metrics(r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self._add_lookups()

    def _add_lookups(self) -> None:
        """The children of the metrics every call (or event) counts, each looked up once."""
        self.tool_calls_of = Children(self.tool_calls)
        self.call_latency_of = Children(self.call_latency)
        self.policy_decisions_of = Children(self.policy_decisions)
        self.sandbox_runs_of = Children(self.sandbox_runs)
        self.audit_events_of = Children(self.audit_events)
        self.tasks_of = Children(self.tasks)
        self.errors_of = Children(self.errors)
        self.compliance_of = Children(self.compliance)
        self.sandbox_seconds_of = Children(self.sandbox_seconds)
        self.result_bytes_of = Children(self.result_bytes)

    def _add_call_metrics(self, r: CollectorRegistry) -> None:
        """Per call (fed by ``MetricsStep`` and the policy engine): outcomes and latencies."""
        self.tool_calls = Counter(
            "symbi_tool_calls",
            "Tool calls by tool, upstream and outcome",
            ["tool", "upstream", "outcome"],
            registry=r,
        )
        self.call_latency = Histogram(
            "symbi_tool_call_seconds",
            "Tool call latency through the gateway",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.policy_decisions = Counter(
            "symbi_policy_decisions", "Policy decisions by result", ["decision"], registry=r
        )
        self.policy_latency = Histogram(
            "symbi_policy_decision_seconds", "Policy evaluation latency", buckets=_LATENCY_BUCKETS, registry=r
        )

    def _add_component_metrics(self, r: CollectorRegistry) -> None:
        """The components' health (fed by ``MetricsSink`` from events): verification, upstreams,
        sandbox runs, audit, HTTP sessions and requests."""
        self.verification_failures = Counter(
            "symbi_verification_failures", "Tool verification failures", ["upstream", "status"], registry=r
        )
        self.drift = Counter("symbi_tool_drift", "Tool definition drift detected", ["upstream"], registry=r)
        self.upstream_up = Gauge(
            "symbi_upstream_up", "1 when the upstream is connected", ["upstream"], registry=r
        )
        self.upstream_restarts = Counter(
            "symbi_upstream_restarts", "Upstream reconnects after a failure", ["upstream"], registry=r
        )
        self.upstream_down = Counter("symbi_upstream_down", "Upstream disconnects", ["upstream"], registry=r)
        self.sandbox_runs = Counter(
            "symbi_sandbox_runs", "Sandbox runs by tier", ["tier", "outcome"], registry=r
        )
        self.audit_events = Counter(
            "symbi_audit_events", "Gateway events by type", ["event_type"], registry=r
        )
        self.audit_write_latency = Histogram(
            "symbi_audit_write_seconds", "Audit write latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.active_sessions = Gauge("symbi_active_sessions", "Open streamable HTTP sessions", registry=r)
        self.http_requests = Counter(
            "symbi_http_requests", "HTTP requests by route group and status", ["route", "status"], registry=r
        )

    def _add_business_metrics(self, r: CollectorRegistry) -> None:
        """The seed's business metrics (监控 / 业务指标): task completion, errors by type, resource
        efficiency (with the process collector's CPU and memory), compliance results."""
        self.tasks = Counter(
            "symbi_tasks",
            "Requests (tool calls, resource reads, prompt gets) by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.errors = Counter(
            "symbi_errors", "Denials and failures by error type (the error code)", ["error_type"], registry=r
        )
        self.compliance = Counter(
            "symbi_compliance_checks",
            "Per-request compliance checks (verification, policy, audit) by result",
            ["check", "result"],
            registry=r,
        )
        self.sandbox_seconds = Histogram(
            "symbi_sandbox_run_seconds",
            "Wall time of code tool calls by sandbox tier",
            ["tier"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.result_bytes = Histogram(
            "symbi_result_bytes",
            "Size of results returned to clients",
            ["kind"],
            buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
            registry=r,
        )

    def track_runtime(self, runtime: Callable[[], Any]) -> None:
        """Agents, scheduler queues, budgets and breakers, read from the runtime at scrape time."""
        from gateway.runtime.metrics import RuntimeCollector

        self.registry.register(RuntimeCollector(runtime))

    def keep_tools(self, current: Collection[str]) -> None:
        """Drop the label sets of tools no longer in the catalogue (their series end).

        Called at scrape time and by ``GET /api/state``: label sets stay bounded by the
        catalogue (plus ``unknown``) however many tools come and go.
        """
        held = {
            (x.labels["tool"], x.labels["upstream"], x.labels["outcome"])
            for fam in self.tool_calls.collect()
            for x in fam.samples
        }
        for labels in held:
            if labels[0] != "unknown" and labels[0] not in current:
                self.tool_calls.remove(*labels)
                self.tool_calls_of.forget(labels)  # a later call starts a new series, as labels() would

    def track_sessions(self, count: Callable[[], int]) -> None:
        """Read the open-session count at scrape time."""
        self.active_sessions.set_function(lambda: float(count()))

    def observe_policy(self, seconds: float) -> None:
        self.policy_latency.observe(seconds)

    def observe_audit_write(self, seconds: float) -> None:
        self.audit_write_latency.observe(seconds)
        self.compliance_of("audit", "pass").inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


# the events whose upstream is counted too (MetricsSink._count)
_UPSTREAM_EVENTS = frozenset(
    {Event.UPSTREAM_UP, Event.UPSTREAM_DOWN, Event.TOOL_VERIFICATION, Event.TOOL_DRIFT}
)


class MetricsSink:
    """An ``EventSink`` tee: counts the event, then passes it on unchanged."""

    def __init__(self, inner: EventSink, metrics: GatewayMetrics) -> None:
        self.inner = inner
        self.metrics = metrics

    def emit(
        self,
        event_type: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        self.count(event_type, details)
        self.inner.emit(event_type, details, principal=principal, agent=agent)

    def submit(
        self,
        event_type: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> asyncio.Future[int]:
        """Queue and count once committed (``events.Recording``): a held record is offered
        again after each failed attempt, and counted once. A sink that does not commit
        (logging) wrote it when ``emit`` returned: counted then, its commit 0."""
        if isinstance(self.inner, Recording):
            commit = self.inner.submit(event_type, details, principal=principal, agent=agent)
            commit.add_done_callback(lambda c: self._committed(c, event_type, details))
            return commit
        self.inner.emit(event_type, details, principal=principal, agent=agent)
        self.count(event_type, details)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.set_result(0)
        return done

    def _committed(self, commit: asyncio.Future[int], event_type: Event, details: Mapping[str, Any]) -> None:
        if not commit.cancelled() and commit.exception() is None:
            self.count(event_type, details)

    def count(self, event_type: Event, details: Mapping[str, Any]) -> None:
        """Count one event (never raises: a metrics bug must not lose the event itself)."""
        try:
            self._count(event_type, details)
        except Exception:
            _logger.exception("metrics: could not count event %s", event_type)

    def _count(self, event_type: Event, details: Mapping[str, Any]) -> None:
        m = self.metrics
        m.audit_events_of(event_type).inc()
        if event_type not in _UPSTREAM_EVENTS:  # a call's events: counted by type only
            return
        upstream = str(details.get("upstream", "unknown"))
        if event_type == Event.UPSTREAM_UP:
            m.upstream_up.labels(upstream).set(1)
            if int(details.get("restarts") or 0) > 0:
                m.upstream_restarts.labels(upstream).inc()
        elif event_type == Event.UPSTREAM_DOWN:
            m.upstream_up.labels(upstream).set(0)
            m.upstream_down.labels(upstream).inc()
        elif event_type == Event.TOOL_VERIFICATION:
            if details.get("blocked"):  # gateway.context.is_blocked, decided by the verifier
                m.verification_failures.labels(upstream, str(details.get("status", "unknown"))).inc()
        elif event_type == Event.TOOL_DRIFT:
            m.drift.labels(upstream).inc()


@dataclass(frozen=True)
class RecentCall:
    """One call outcome, as the dashboard's "recent decisions" shows it."""

    time: float
    principal: str
    kind: str
    target: str
    upstream: str | None
    outcome: str  # ok | error | denied
    decision: str | None  # allow | deny | None (no policy decision was made)
    reasons: tuple[str, ...]
    error_code: str | None
    latency_ms: float

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "principal": self.principal,
            "kind": self.kind,
            "target": self.target,
            "upstream": self.upstream,
            "outcome": self.outcome,
            "decision": self.decision,
            "reasons": list(self.reasons),
            "error_code": self.error_code,
            "latency_ms": round(self.latency_ms, 3),
        }


class RecentCalls:
    """A bounded ring buffer of the last ``size`` call outcomes (memory stays constant)."""

    def __init__(self, size: int = 200) -> None:
        self._buf: collections.deque[RecentCall] = collections.deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, item: RecentCall) -> None:
        with self._lock:
            self._buf.append(item)

    def latest(self, n: int | None = None) -> list[RecentCall]:
        """Newest first."""
        with self._lock:
            items = list(self._buf)
        items.reverse()
        return items if n is None else items[: max(0, n)]

    @property
    def size(self) -> int:
        return self._buf.maxlen or 0

    def __len__(self) -> int:
        return len(self._buf)
