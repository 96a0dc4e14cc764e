"""GatewayMetrics: label sets of tools that leave the catalogue are dropped."""

from __future__ import annotations

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
