"""The seed's business metrics, fed by the metrics step: task completion, errors by type,
resource efficiency inputs, compliance results."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import CallContext, Decision, Principal, ToolInfo
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


def _call(tool: ToolInfo | None, kind: str = "tools/call", **kw: object) -> CallContext:
    return CallContext(principal=Principal("p"), kind=kind, target=tool.name if tool else "x", tool=tool, **kw)  # type: ignore[arg-type]


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
    code = ToolInfo(name="sandbox__run_python", original_name="run_python", upstream="sandbox", definition={},
                    code_tool=True, verification="verified")

    async def ran(call: CallContext) -> object:
        return object()

    await MetricsStep(m, RecentCalls(2))(_call(code, sandbox_tier="bwrap"), ran)
    assert value(m, "symbi_sandbox_run_seconds_count", tier="bwrap") == 1
