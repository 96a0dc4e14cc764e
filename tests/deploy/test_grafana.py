"""The Grafana dashboard is built on metrics the gateway really exports: every query's metric
names appear on ``/metrics`` of a running gateway (after a few real calls)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.server.http.conftest import bearer, everything_config, make_keys, run_server
from tests.server.http.test_auth import INIT, MCP_HEADERS

pytestmark = pytest.mark.npm
DASHBOARD = ROOT / "deploy/grafana/symbi-gateway.json"
# PromQL words that look like identifiers but are not metric names
PROMQL = {
    "sum",
    "by",
    "without",
    "rate",
    "increase",
    "irate",
    "histogram_quantile",
    "clamp_min",
    "clamp_max",
    "avg",
    "max",
    "min",
    "count",
    "le",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "delta",
    "deriv",
    "abs",
    "vector",
    "scalar",
    "time",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Identifiers that are metric names: not in {...} label matchers, by (...) lists, strings or $vars."""
    stripped = re.sub(r'"[^"]*"', '""', expr)
    stripped = re.sub(r"\{[^}]*\}", "", stripped)
    stripped = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", stripped)
    stripped = re.sub(r"\[[^\]]*\]", "", stripped)
    words = set(re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    return {w for w in words if w not in PROMQL and not re.fullmatch(r"\d+e\d+|e\d+", w)}


def exported(text: str) -> set[str]:
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names |= {fam.name + s for s in SUFFIXES.get(fam.type, ("",))}
        names |= {s.name for s in fam.samples}
    return names


def test_metric_names_are_read_from_queries() -> None:
    assert metric_names('sum by (error_type) (rate(symbi_errors_total{kind="x"}[5m]))') == {
        "symbi_errors_total"
    }
    assert metric_names("histogram_quantile(0.95, sum by (le, tier) (rate(a_bucket[$__rate_interval])))") == {
        "a_bucket"
    }
    assert metric_names("rate(process_cpu_seconds_total[5m]) / clamp_min(sum(rate(b_total[5m])), 1e-9)") == {
        "process_cpu_seconds_total",
        "b_total",
    }


def test_every_dashboard_query_names_an_exported_metric(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        r = httpx.post(run.mcp, json=INIT, headers={**MCP_HEADERS, **bearer(keys.user)}, timeout=10)
        h = {
            **MCP_HEADERS,
            **bearer(keys.user),
            "mcp-session-id": r.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        httpx.post(
            run.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, timeout=10
        )
        for i, name in enumerate(["everything__echo", "everything__printEnv", "nope__nothing"]):
            call = {
                "jsonrpc": "2.0",
                "id": 10 + i,
                "method": "tools/call",
                "params": {"name": name, "arguments": {"message": "m"}},
            }
            assert httpx.post(run.mcp, json=call, headers=h, timeout=30).status_code == 200
        text = httpx.get(run.base + "/metrics", timeout=10).text
    names = exported(text)
    qs = queries()
    assert len(qs) >= 10
    missing = {q: sorted(metric_names(q) - names) for q in qs if metric_names(q) - names}
    assert not missing, f"dashboard queries name metrics /metrics does not export: {missing}"
    # the seed's business metrics are there, with samples after real calls
    for needed in (
        "symbi_tasks_total",
        "symbi_errors_total",
        "symbi_compliance_checks_total",
        "process_cpu_seconds_total",
    ):
        assert any(line.startswith(needed) for line in text.splitlines()), needed
    assert re.search(r'symbi_errors_total\{error_type="(unknown_tool|policy_denied)"\}', text)
