"""GatewayMetrics: label sets of tools that leave the catalogue are dropped; the per-call
lookups of labelled children count in the series ``labels`` gives."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import GatewayMetrics
from gateway.server.footprint import metrics_label_sets


def test_keep_tools_drops_the_label_sets_of_tools_gone_from_the_catalogue() -> None:
    m = GatewayMetrics()
    base = metrics_label_sets(m)
    for tool in ("a__x", "a__y"):
        for outcome in ("ok", "denied"):
            m.tool_calls.labels(tool, "a", outcome).inc()
    assert metrics_label_sets(m) == base + 4
    m.keep_tools({"a__y", "b__z"})
    assert metrics_label_sets(m) == base + 2
    samples = {s.labels["tool"] for f in m.tool_calls.collect() for s in f.samples}
    assert samples == {"a__y"}


def _value(m: GatewayMetrics, name: str, **labels: str) -> float | None:
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_a_looked_up_child_is_the_series_labels_gives() -> None:
    """``Children`` hands out the child ``labels`` makes: counts through either land in one
    series, as many as were made, and the exposition is the one ``labels`` alone gives."""
    looked_up, plain = GatewayMetrics(), GatewayMetrics()
    for m in (looked_up, plain):
        m.tool_calls.labels("a__x", "a", "ok").inc()
        m.call_latency.labels("a").observe(0.003)
    for _ in range(3):
        looked_up.tool_calls_of("a__x", "a", "ok").inc()
        looked_up.call_latency_of("a").observe(0.003)
        plain.tool_calls.labels("a__x", "a", "ok").inc()
        plain.call_latency.labels("a").observe(0.003)
    assert looked_up.tool_calls_of("a__x", "a", "ok") is looked_up.tool_calls.labels("a__x", "a", "ok")
    assert _value(looked_up, "symbi_tool_calls_total", tool="a__x", upstream="a", outcome="ok") == 4.0
    assert _value(looked_up, "symbi_tool_call_seconds_bucket", upstream="a", le="0.005") == 4.0
    assert _series(looked_up) == _series(plain)


def _series(m: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the clock's (creation times, the process collector's readings)."""
    out = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        if fam.name.startswith("process_"):
            continue
        for s in fam.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_tool_dropped_by_keep_tools_counts_anew_when_it_comes_back() -> None:
    """A label set ``keep_tools`` removed is forgotten by the lookup too: the tool's next call
    starts a new series at 1 (a kept child would count on, unseen by the exposition)."""
    m = GatewayMetrics()
    for _ in range(2):
        m.tool_calls_of("a__x", "a", "ok").inc()
    m.keep_tools({"b__y"})
    assert _value(m, "symbi_tool_calls_total", tool="a__x", upstream="a", outcome="ok") is None
    m.tool_calls_of("a__x", "a", "ok").inc()
    assert _value(m, "symbi_tool_calls_total", tool="a__x", upstream="a", outcome="ok") == 1.0
