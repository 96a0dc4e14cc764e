"""Chain step: count each call, time it, and keep it in the recent-decisions ring buffer.

It belongs outermost (before audit) so it sees every allow, deny and crash; it never
changes the result and re-raises every error unchanged.
"""

from __future__ import annotations

import re
import time
from typing import Any

from gateway.chain import CallNext
from gateway.context import APPROVED, CallContext
from gateway.errors import AuditError, GatewayError, VerificationDenied, is_denial
from gateway.metrics import GatewayMetrics, RecentCall, RecentCalls

_TASK_KINDS = frozenset({"tools/call", "resources/read", "prompts/get"})
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")  # error codes are label values: keep them bounded


class MetricsStep:
    """Records tool calls by tool/upstream/outcome, latency, and the policy decision."""

    def __init__(self, metrics: GatewayMetrics, recent: RecentCalls | None = None) -> None:
        self.metrics = metrics
        self.recent = recent if recent is not None else metrics.recent

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        error: BaseException | None = None
        result: Any = None
        try:
            result = await call_next(call)
            return result
        except BaseException as e:
            error = e
            raise
        finally:
            self._record(call, result, error)

    def _record(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        elapsed = call.elapsed_ms
        code: str | None
        reasons: tuple[str, ...]
        if error is not None:
            outcome = "denied" if is_denial(error) else "error"
            code = error.code if isinstance(error, GatewayError) else "internal_error"
            reasons = tuple(error.reasons) if isinstance(error, GatewayError) else (type(error).__name__,)
        elif call.outcome == "denied":
            outcome, code, reasons = "denied", call.error_code, tuple(call.reasons)
        elif getattr(result, "is_error", False) is True:  # a tool result the upstream marked failed
            outcome, code, reasons = "error", call.error_code, tuple(call.reasons)
        else:
            outcome, code, reasons = "ok", None, tuple(call.reasons)
        decision = None
        if call.decision is not None:
            decision = "allow" if call.decision.allow else "deny"
            reasons = reasons or tuple(call.decision.reasons)
            self.metrics.policy_decisions_of(decision).inc()
        # Only catalogue names become label values: a client cannot blow up cardinality.
        upstream = call.tool.upstream if call.tool is not None else None
        if call.sandbox_tier is not None and call.tool is not None and call.tool.code_tool:
            self.metrics.sandbox_runs_of(call.sandbox_tier, outcome).inc()
        self._business(call, outcome, code, error, elapsed)
        if call.kind == "tools/call":
            tool = call.tool.name if call.tool is not None else "unknown"
            self.metrics.tool_calls_of(tool, upstream or "unknown", outcome).inc()
            self.metrics.call_latency_of(upstream or "unknown").observe(elapsed / 1000.0)
        self.recent.add(
            RecentCall(
                time=time.time(),
                principal=call.principal.id,
                kind=call.kind,
                target=call.target[:200],
                upstream=upstream or (call.upstream.name if call.upstream is not None else None),
                outcome=outcome,
                decision=decision,
                reasons=tuple(str(r)[:500] for r in reasons[:10]),
                error_code=code,
                latency_ms=elapsed,
            )
        )

    def _business(
        self,
        call: CallContext,
        outcome: str,
        code: str | None,
        error: BaseException | None,
        elapsed_ms: float,
    ) -> None:
        """Task completion, errors by type, resource use, compliance results (the seed's list)."""
        m = self.metrics
        if call.kind not in _TASK_KINDS:
            return
        m.tasks_of(call.kind, outcome).inc()
        if outcome != "ok":
            error_type = (
                code if code and _CODE.match(code) else ("tool_error" if outcome == "error" else "denied")
            )
            m.errors_of(error_type).inc()
        if call.tool is not None:
            status = call.tool.verification
            m.compliance_of(
                "verification",
                "pass"
                if status in APPROVED
                else "fail"
                if call.tool.blocked or isinstance(error, VerificationDenied)
                else "unverified",
            ).inc()
        if call.decision is not None:
            m.compliance_of("policy", "pass" if call.decision.allow else "fail").inc()
        if isinstance(error, AuditError):
            m.compliance_of("audit", "fail").inc()
        if call.result_bytes is not None:
            m.result_bytes_of(call.kind).observe(call.result_bytes)
        if call.sandbox_tier is not None and call.tool is not None and call.tool.code_tool:
            m.sandbox_seconds_of(call.sandbox_tier).observe(elapsed_ms / 1000.0)
