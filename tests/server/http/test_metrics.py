"""``/metrics``: parsed with the Prometheus text parser, values checked after known calls."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import CallContext, Decision, Principal, ToolInfo
from gateway.errors import PolicyDenied
from gateway.events import Event
from gateway.metrics import GatewayMetrics, MetricsSink, RecentCalls
from gateway.steps.metrics import MetricsStep
from tests.conftest import RecordingSink
from tests.server.http.conftest import bearer, everything_config, make_keys, run_server


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def hc_get(url: str) -> httpx2.Response:
    async with httpx2.AsyncClient() as c:
        return await c.get(url)


@pytest.mark.anyio
async def test_metrics_after_known_calls(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        before = await hc_get(run.base + "/metrics")
        assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
        assert value(before.text, "symbi_upstream_up", upstream="everything") == 1.0
        assert value(before.text, "symbi_audit_events_total", event_type="upstream.up") == 1.0
        async with (
            httpx2.AsyncClient(headers=bearer(keys.user)) as hc,
            streamable_http_client(run.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            mid = (await hc_get(run.base + "/metrics")).text
            assert value(mid, "symbi_active_sessions") == 1.0
            for i in range(3):
                assert not (await s.call_tool("everything__echo", {"message": f"m{i}"})).is_error
            assert (await s.call_tool("everything__get-sum", {"a": 2, "b": 3})).is_error is False
            bad = await s.call_tool(
                "everything__echo", {"wrong": 1}
            )  # arguments invalid: the gateway says no
            assert bad.is_error
            missing = await s.call_tool("everything__no_such_tool", {})
            assert missing.is_error
            refused = await s.call_tool("everything__get-tiny-image", {})  # not in bob's allow-list: hidden
            assert refused.is_error and refused.meta["symbi/error"]["code"] == "unknown_tool"  # type: ignore[index]
        text = (await hc_get(run.base + "/metrics")).text
        assert (
            value(
                text, "symbi_tool_calls_total", tool="everything__echo", upstream="everything", outcome="ok"
            )
            == 3.0
        )
        assert (
            value(
                text,
                "symbi_tool_calls_total",
                tool="everything__get-sum",
                upstream="everything",
                outcome="ok",
            )
            == 1.0
        )
        assert (
            value(
                text,
                "symbi_tool_calls_total",
                tool="everything__echo",
                upstream="everything",
                outcome="denied",
            )
            == 1.0
        )
        # an unknown name never becomes a label value; a hidden tool counts as unknown
        assert (
            value(text, "symbi_tool_calls_total", tool="unknown", upstream="unknown", outcome="denied") == 2.0
        )
        assert not any("everything__no_such_tool" in k[1].__repr__() for k in samples(text))
        assert not any("everything__get-tiny-image" in k[1].__repr__() for k in samples(text))
        assert value(text, "symbi_tool_call_seconds_count", upstream="everything") == 5.0
        # the policy decided the 4 allowed calls (bad arguments stop earlier, a hidden tool
        # stops at the name, like a missing one)
        assert value(text, "symbi_policy_decisions_total", decision="allow") == 4.0
        assert value(text, "symbi_policy_decisions_total", decision="deny") == 0.0
        # every decision and every durable audit write is timed
        assert value(text, "symbi_policy_decision_seconds_count") == 4.0
        assert value(text, "symbi_audit_write_seconds_count") >= 7.0
        assert value(text, "symbi_http_requests_total", route="mcp", status="200") >= 6.0


@pytest.mark.anyio
async def test_metrics_step_counts_policy_decisions_and_reraises() -> None:
    m, recent = GatewayMetrics(), RecentCalls(3)
    step = MetricsStep(m, recent)
    tool = ToolInfo(name="up__t", original_name="t", upstream="up", definition={})

    async def allow(call: CallContext) -> object:
        call.decision = Decision(allow=True)
        return object()

    async def deny(call: CallContext) -> object:
        call.decision = Decision(allow=False, reasons=("not on the allow-list",))
        raise PolicyDenied("denied", reasons=["not on the allow-list"])

    call = CallContext(principal=Principal("p"), kind="tools/call", target="up__t", tool=tool)
    await step(call, allow)
    with pytest.raises(PolicyDenied):
        await step(CallContext(principal=Principal("p"), kind="tools/call", target="up__t", tool=tool), deny)
    text = m.render().decode()
    assert value(text, "symbi_policy_decisions_total", decision="allow") == 1.0
    assert value(text, "symbi_policy_decisions_total", decision="deny") == 1.0
    assert value(text, "symbi_tool_calls_total", tool="up__t", upstream="up", outcome="denied") == 1.0
    last = recent.latest(1)[0]
    assert (last.outcome, last.decision, last.reasons) == ("denied", "deny", ("not on the allow-list",))
    for _ in range(5):
        await step(CallContext(principal=Principal("p"), kind="tools/call", target="up__t", tool=tool), allow)
    assert len(recent) == 3  # the ring buffer stays bounded
    code = ToolInfo(
        name="sandbox__run_python",
        original_name="run_python",
        upstream="sandbox",
        definition={},
        code_tool=True,
    )
    await step(
        CallContext(
            principal=Principal("p"), kind="tools/call", target=code.name, tool=code, sandbox_tier="gvisor"
        ),
        allow,
    )
    assert value(m.render().decode(), "symbi_sandbox_runs_total", tier="gvisor", outcome="ok") == 1.0


def test_metrics_sink_counts_events_and_passes_them_on() -> None:
    inner = RecordingSink()
    m = GatewayMetrics()
    sink = MetricsSink(inner, m)
    sink.emit(Event.UPSTREAM_UP, {"upstream": "a", "restarts": 0})
    sink.emit(Event.UPSTREAM_DOWN, {"upstream": "a"})
    sink.emit(Event.UPSTREAM_UP, {"upstream": "a", "restarts": 1})
    sink.emit(Event.TOOL_DRIFT, {"upstream": "a"})
    sink.emit(Event.TOOL_VERIFICATION, {"upstream": "a", "status": "failed", "blocked": True})
    # not a failure:
    sink.emit(Event.TOOL_VERIFICATION, {"upstream": "a", "status": "pinned", "blocked": False})
    # warn mode lets an unsigned tool through: not blocked, so not a failure either
    sink.emit(Event.TOOL_VERIFICATION, {"upstream": "b", "status": "failed", "blocked": False})
    text = m.render().decode()
    assert inner.types() == [
        "upstream.up",
        "upstream.down",
        "upstream.up",
        "tool.drift",
        "tool.verification",
        "tool.verification",
        "tool.verification",
    ]
    assert value(text, "symbi_upstream_up", upstream="a") == 1.0
    assert value(text, "symbi_upstream_down_total", upstream="a") == 1.0
    assert value(text, "symbi_upstream_restarts_total", upstream="a") == 1.0
    assert value(text, "symbi_tool_drift_total", upstream="a") == 1.0
    assert value(text, "symbi_verification_failures_total", upstream="a", status="failed") == 1.0
    assert value(text, "symbi_verification_failures_total", upstream="a", status="pinned") == 0.0
    assert value(text, "symbi_verification_failures_total", upstream="b", status="failed") == 0.0
    assert value(text, "symbi_audit_events_total", event_type="upstream.up") == 2.0
