"""The seed's business metrics, fed by the metrics step: task completion, errors by type,
resource efficiency inputs, compliance results."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import CallContext, CallKind, Decision, Principal, ToolInfo
from gateway.errors import AuditError, PolicyDenied, UnknownTool
from gateway.metrics import GatewayMetrics, RecentCalls
from gateway.steps.metrics import MetricsStep

pytestmark = pytest.mark.anyio


def value(m: GatewayMetrics, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


def _call(tool: ToolInfo | None, kind: CallKind = "tools/call", **kw: Any) -> CallContext:
    return CallContext(
        principal=Principal("p"), kind=kind, target=tool.name if tool else "x", tool=tool, **kw
    )


VERIFIED = ToolInfo(name="up__t", original_name="t", upstream="up", definition={}, verification="verified")
UNVERIFIED = ToolInfo(name="up__u", original_name="u", upstream="up", definition={}, verification_mode="warn")


async def test_tasks_errors_and_compliance_after_known_calls() -> None:
    m = GatewayMetrics()
    step = MetricsStep(m, RecentCalls(10))

    async def ok(call: CallContext) -> object:
        call.decision = Decision(allow=True)
        call.result_bytes = 300
        return object()

    async def deny(call: CallContext) -> object:
        call.decision = Decision(allow=False, reasons=("no",))
        raise PolicyDenied("no")

    async def unknown(call: CallContext) -> object:
        raise UnknownTool("no such tool")

    async def audit_down(call: CallContext) -> object:
        raise AuditError("disk full")

    await step(_call(VERIFIED), ok)
    await step(_call(UNVERIFIED), ok)
    await step(_call(VERIFIED, kind="resources/read"), ok)
    with pytest.raises(PolicyDenied):
        await step(_call(VERIFIED), deny)
    with pytest.raises(UnknownTool):
        await step(_call(None), unknown)
    with pytest.raises(AuditError):
        await step(_call(VERIFIED), audit_down)

    assert value(m, "symbi_tasks_total", kind="tools/call", outcome="ok") == 2
    assert value(m, "symbi_tasks_total", kind="resources/read", outcome="ok") == 1
    assert value(m, "symbi_tasks_total", kind="tools/call", outcome="denied") == 2
    assert value(m, "symbi_tasks_total", kind="tools/call", outcome="error") == 1
    assert value(m, "symbi_errors_total", error_type="policy_denied") == 1
    assert value(m, "symbi_errors_total", error_type="unknown_tool") == 1
    assert value(m, "symbi_errors_total", error_type="audit_unavailable") == 1
    assert value(m, "symbi_compliance_checks_total", check="verification", result="pass") == 4
    assert value(m, "symbi_compliance_checks_total", check="verification", result="unverified") == 1
    assert value(m, "symbi_compliance_checks_total", check="policy", result="pass") == 3
    assert value(m, "symbi_compliance_checks_total", check="policy", result="fail") == 1
    assert value(m, "symbi_compliance_checks_total", check="audit", result="fail") == 1
    assert value(m, "symbi_result_bytes_count", kind="tools/call") == 2
    m.observe_audit_write(0.001)
    assert value(m, "symbi_compliance_checks_total", check="audit", result="pass") == 1
    assert value(m, "process_cpu_seconds_total") > 0  # resource efficiency: CPU per completed task


async def test_code_tool_time_is_measured_per_tier() -> None:
    m = GatewayMetrics()
    code = ToolInfo(
        name="sandbox__run_python",
        original_name="run_python",
        upstream="sandbox",
        definition={},
        code_tool=True,
        verification="verified",
    )

    async def ran(call: CallContext) -> object:
        return object()

    await MetricsStep(m, RecentCalls(2))(_call(code, sandbox_tier="bwrap"), ran)
    assert value(m, "symbi_sandbox_run_seconds_count", tier="bwrap") == 1


class _IsError:
    is_error = True


async def test_each_call_lands_in_the_recent_ring_and_the_per_tool_counters() -> None:
    """What the dashboard's "recent decisions" and the per-tool counters show for an allow,
    a denial, a tool error, a crash and a tool the policy step marked denied without raising."""
    from gateway.context import UpstreamInfo
    from gateway.errors import AuditError as _Audit

    m = GatewayMetrics()
    ring = RecentCalls(10)
    step = MetricsStep(m, ring)
    code = ToolInfo(
        name="sandbox__run",
        original_name="run",
        upstream="sandbox",
        definition={},
        code_tool=True,
        verification="verified",
    )
    result = object()

    async def ok(call: CallContext) -> object:
        call.decision = Decision(allow=True, reasons=("fine",))
        return result

    async def deny(call: CallContext) -> object:
        call.decision = Decision(allow=False, reasons=("policy says no",))
        raise PolicyDenied("no", reasons=["r" * 600] + [f"x{i}" for i in range(12)])

    async def tool_error(call: CallContext) -> object:
        call.error_code, call.reasons = "tool_failed", ["upstream said no"]
        return _IsError()

    async def marked(call: CallContext) -> object:
        call.outcome, call.error_code, call.reasons = "denied", "rate_limited", ["too many"]
        return None

    async def crash(call: CallContext) -> object:
        raise RuntimeError("boom")

    assert await step(_call(VERIFIED), ok) is result  # the step never changes the result
    with pytest.raises(PolicyDenied):
        await step(_call(VERIFIED), deny)
    await step(_call(VERIFIED), tool_error)
    await step(_call(UNVERIFIED), marked)
    with pytest.raises(RuntimeError):
        await step(_call(code, sandbox_tier="docker"), crash)
    with pytest.raises(_Audit):

        async def audit(call: CallContext) -> object:
            raise _Audit("disk")

        await step(
            CallContext(
                principal=Principal("q"),
                kind="resources/read",
                target="file:///" + "a" * 300,
                upstream=UpstreamInfo(name="fs", transport="stdio"),
            ),
            audit,
        )

    latest = ring.latest()
    assert [(r.kind, r.outcome, r.decision, r.error_code) for r in reversed(latest)] == [
        ("tools/call", "ok", "allow", None),
        ("tools/call", "denied", "deny", "policy_denied"),
        ("tools/call", "error", None, "tool_failed"),
        ("tools/call", "denied", None, "rate_limited"),
        ("tools/call", "error", None, "internal_error"),
        ("resources/read", "error", None, "audit_unavailable"),
    ]
    read, crashed, marked_r, failed, denied, allowed = latest
    assert (allowed.principal, allowed.target, allowed.upstream, allowed.reasons) == (
        "p",
        "up__t",
        "up",
        ("fine",),
    )
    assert allowed.latency_ms >= 0 and allowed.time > 0
    assert (
        len(denied.reasons) == 10 and denied.reasons[0] == "r" * 500
    )  # bounded, the error's own reasons first
    assert failed.reasons == ("upstream said no",) and marked_r.reasons == ("too many",)
    assert crashed.reasons == ("RuntimeError",) and crashed.upstream == "sandbox"
    assert (read.principal, read.upstream, len(read.target)) == ("q", "fs", 200)

    assert value(m, "symbi_tool_calls_total", tool="up__t", upstream="up", outcome="ok") == 1
    assert value(m, "symbi_tool_calls_total", tool="up__t", upstream="up", outcome="denied") == 1
    assert value(m, "symbi_tool_calls_total", tool="up__t", upstream="up", outcome="error") == 1
    assert value(m, "symbi_tool_calls_total", tool="up__u", upstream="up", outcome="denied") == 1
    assert value(m, "symbi_tool_calls_total", tool="sandbox__run", upstream="sandbox", outcome="error") == 1
    assert value(m, "symbi_tool_call_seconds_count", upstream="up") == 4
    assert value(m, "symbi_tool_call_seconds_count", upstream="sandbox") == 1
    assert value(m, "symbi_policy_decisions_total", decision="allow") == 1
    assert value(m, "symbi_policy_decisions_total", decision="deny") == 1
    assert value(m, "symbi_sandbox_runs_total", tier="docker", outcome="error") == 1
    assert value(m, "symbi_errors_total", error_type="tool_failed") == 1
    assert value(m, "symbi_errors_total", error_type="rate_limited") == 1
    assert value(m, "symbi_errors_total", error_type="internal_error") == 1
    assert value(m, "symbi_compliance_checks_total", check="verification", result="fail") == 0
    assert value(m, "symbi_tasks_total", kind="resources/read", outcome="error") == 1


async def test_unknown_tools_and_bad_codes_do_not_become_label_values() -> None:
    m = GatewayMetrics()
    step = MetricsStep(m)  # the gateway's own ring by default
    blocked = ToolInfo(
        name="up__b", original_name="b", upstream="up", definition={}, verification="unverified"
    )

    async def weird(call: CallContext) -> object:
        call.outcome, call.error_code = "denied", "Not A Code!"
        return None

    async def odd_error(call: CallContext) -> object:
        call.error_code = None
        return _IsError()

    await step(_call(None), weird)
    await step(_call(blocked), odd_error)
    await step(_call(None, kind="prompts/get"), odd_error)
    await step(_call(None, kind="tools/list"), weird)  # type: ignore[arg-type]  # not a task (nor a CallKind): no business metrics
    assert value(m, "symbi_tool_calls_total", tool="unknown", upstream="unknown", outcome="denied") == 1
    assert value(m, "symbi_errors_total", error_type="denied") == 1
    assert value(m, "symbi_errors_total", error_type="tool_error") == 2
    assert value(m, "symbi_compliance_checks_total", check="verification", result="fail") == 1
    assert value(m, "symbi_tasks_total", kind="prompts/get", outcome="error") == 1
    assert value(m, "symbi_tasks_total", kind="tools/list", outcome="denied") == 0
    assert len(m.recent) == 4 and m.recent.latest(1)[0].kind == "tools/list"
    assert value(m, "symbi_sandbox_runs_total", tier="docker", outcome="ok") == 0


async def test_units_pinned_tools_and_code_tools_without_a_tier() -> None:
    """Latency is observed in seconds; a pinned tool passes the verification check; a code
    tool that ran without a sandbox tier is not a sandbox run; successful calls are no errors."""
    import time as _time

    m = GatewayMetrics()
    step = MetricsStep(m, RecentCalls(5))
    pinned = ToolInfo(
        name="up__p",
        original_name="p",
        upstream="up",
        definition={},
        verification="pinned",
        verification_mode="tofu",
    )
    code = ToolInfo(
        name="sandbox__run",
        original_name="run",
        upstream="sandbox",
        definition={},
        code_tool=True,
        verification="verified",
    )

    async def ok(call: CallContext) -> object:
        return object()

    started = _time.perf_counter()
    await step(_call(pinned), ok)
    await step(_call(code), ok)  # no sandbox tier set
    await step(_call(None, kind="resources/read"), ok)
    await step(_call(code, sandbox_tier="bwrap"), ok)
    wall = _time.perf_counter() - started
    assert value(m, "symbi_compliance_checks_total", check="verification", result="pass") == 3
    assert value(m, "symbi_sandbox_runs_total", tier="bwrap", outcome="ok") == 1
    assert value(m, "symbi_sandbox_run_seconds_count", tier="bwrap") == 1
    assert value(m, "symbi_sandbox_runs_total", tier="None", outcome="ok") == 0
    assert value(m, "symbi_sandbox_run_seconds_count", tier="None") == 0
    assert 0 <= value(m, "symbi_tool_call_seconds_sum", upstream="up") <= wall  # seconds, not ms
    assert 0 <= value(m, "symbi_sandbox_run_seconds_sum", tier="bwrap") <= wall
    errors = [
        s
        for fam in text_string_to_metric_families(m.render().decode())
        for s in fam.samples
        if s.name == "symbi_errors_total"
    ]
    assert errors == []  # only successful calls: no error of any type


async def test_a_call_without_a_tool_is_timed_under_unknown() -> None:
    m = GatewayMetrics()

    async def ok(call: CallContext) -> object:
        return object()

    await MetricsStep(m, RecentCalls(2))(_call(None), ok)
    assert value(m, "symbi_tool_call_seconds_count", upstream="unknown") == 1
