"""The audit step (outermost but for metrics): one durable audit event per call, whatever happened inside.

Refused calls (outcome "denied") past ``[audit] refusals_recorded_per_window`` of a principal
within ``refusal_window_s`` are counted instead, and their counts recorded as one
``audit.refusals_summarized`` event per window (``gateway.audit.refusals``): a flood of refusals
no longer grows the log by a record each. The caller's answer is the same either way. A call
refused after its upstream answered (``call.result_bytes`` is set) had its effect there: always
recorded one by one.

The event is ``tool.call``, ``resource.read`` or ``prompt.get`` (``gateway.events.Event``) and is
committed before the result goes back (``AuditLog.record`` waits for the group commit).
Raw argument values never reach the log: the policy-redacted ``call.audit_arguments`` are
written (``arguments_redacted``: "policy" when the decision's ``redact_arguments`` rules
applied to them, "secrets" when only recognisable secret values and keys were replaced), or,
when no step produced them (denied or crashed before the policy ran), only the argument NAMES
(recognisable secrets replaced there too). A 2026 client's ``input_responses`` likewise. For the same reason, free-text reasons are kept only from errors whose
reasons are written for people and logs (policy, verification, upstream...): validation and
unexpected exceptions can quote argument values, so only their code and type are recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from mcp.types import CallToolResult

from gateway.audit.log import AuditLog
from gateway.audit.refusals import RefusalKey
from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.errors import ArgumentsInvalid, AuditError, GatewayError, is_denial
from gateway.events import Event
from gateway.policy.redact import audit_names, excerpt
from gateway.telemetry import current_ids

EVENT_TYPES: dict[str, Event] = {
    "tools/call": Event.TOOL_CALL,
    "resources/read": Event.RESOURCE_READ,
    "prompts/get": Event.PROMPT_GET,
}


class AuditStep:
    """Records every call (allowed, denied, failed, crashed) in ``log``; fails closed."""

    def __init__(
        self, log: AuditLog, *, timeout_s: float = 30.0, observe: Callable[[float], None] | None = None
    ) -> None:
        self.log = log
        self.timeout_s = timeout_s  # a call whose record is not durable by then fails closed
        self._observe = observe  # durable-write latency in seconds (the /metrics histogram)

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        self.log.ensure_writable()  # refuse before any side effect when the log is down
        error: BaseException | None = None
        result: Any = None
        try:
            result = await call_next(call)
            return result
        except BaseException as e:
            error = e
            raise
        finally:
            _settle(call, result, error)
            await self._record(call, error)

    async def _record(self, call: CallContext, error: BaseException | None) -> None:
        try:
            # a call refused after its upstream answered (a result the policy's redaction cannot
            # pass on, too large a resource) ran there: it is recorded one by one, never counted
            refused_before = call.result_bytes is None
            if call.outcome == "denied" and refused_before and not self._one_by_one(call):
                return  # counted: its count is recorded at the window's end (a refusal flood)
            details = event_details(call, error)
            started = time.perf_counter()
            await self.log.record(
                EVENT_TYPES[call.kind],
                details,
                principal=call.principal.id,
                agent=call.principal.agent,
                timeout=self.timeout_s,
            )
            if self._observe is not None:
                self._observe(time.perf_counter() - started)
        except AuditError as audit_error:
            # the call is refused: its record could not be made durable (on_failure = deny)
            raise audit_error from error

    def _one_by_one(self, call: CallContext) -> bool:
        """Whether a refused call gets a record of its own: the first few per principal and
        window do, the rest are counted (``gateway.audit.refusals``). Same answer to the caller."""
        target = call.tool.name if call.tool is not None else call.target
        key = RefusalKey(call.principal.agent, EVENT_TYPES[call.kind], call.error_code, target)
        return self.log.admit_refusal(call.principal.id, key, call.call_id)


def _settle(call: CallContext, result: Any, error: BaseException | None) -> None:
    """Fill outcome / error_code on the context from what the inner chain did."""
    if error is None:
        is_error = isinstance(result, CallToolResult) and result.is_error  # resources/prompts have no isError
        call.outcome = "error" if is_error is True else "ok"
        call.error_code = "tool_error" if is_error is True else None
        return
    call.outcome = "denied" if is_denial(error) else "error"
    if isinstance(error, GatewayError):
        call.error_code = error.code
    elif isinstance(error, asyncio.CancelledError):
        call.error_code = "cancelled"
    else:
        call.error_code = "internal_error"


def event_details(call: CallContext, error: BaseException | None) -> dict[str, Any]:
    """The audit event's details for one call (no raw argument values, ever)."""
    tool, upstream = call.tool, call.upstream
    minimal = call.decision is not None and call.decision.conditions.get("audit") == "minimal"
    if call.audit_arguments is not None and not minimal:
        arguments: dict[str, Any] = dict(call.audit_arguments)
        # "policy" only when redaction rules applied to them: else recognisable secrets alone
        # were replaced ("secrets"), and the record must not claim more
        ruled = call.decision is not None and bool(call.decision.conditions.get("redact_arguments"))
        arguments_redacted = "policy" if ruled else "secrets"
    elif minimal:  # the policy's `audit: "minimal"` condition: argument names only
        arguments = audit_names(call.arguments)
        arguments_redacted = "minimal"
    else:
        arguments = audit_names(call.arguments)
        arguments_redacted = "all"
    decision: dict[str, Any] | None = None
    if call.decision is not None:
        decision = {
            "allow": bool(call.decision.allow),
            "reasons": list(call.decision.reasons),
            "conditions": dict(call.decision.conditions),
        }
    elif call.outcome == "denied":  # refused before the policy ran (e.g. verification)
        decision = {"allow": False, "reasons": _reasons(error), "conditions": {}}
    details: dict[str, Any] = {
        "call_id": call.call_id,
        "session_id": call.session_id,
        "kind": call.kind,
        "target": call.target,
        "tool": tool.name if tool is not None else call.target,
        "original_name": tool.original_name if tool is not None else None,
        "upstream": upstream.name if upstream is not None else (tool.upstream if tool is not None else None),
        "transport": upstream.transport if upstream is not None else None,
        "verification": tool.verification if tool is not None else None,
        "key_fingerprint": tool.key_fingerprint if tool is not None else None,
        "arguments": arguments,
        "arguments_redacted": arguments_redacted,
        "decision": decision,
        "sandbox_tier": call.sandbox_tier,
        "outcome": call.outcome,
        "error_code": call.error_code,
        "duration_ms": round(call.elapsed_ms, 3),
        "result_bytes": call.result_bytes,
        "unverified_warning": bool(call.unverified_warning),
        "started_ns": call.started_ns,
        "trace_id": (current_ids() or (None, None))[0],  # the OpenTelemetry trace of this request
    }
    if call.input_responses is not None or call.request_state is not None:
        _responses(details, call, minimal)
    if error is not None:
        details["error_reasons"] = _reasons(error)
        details["error_type"] = type(error).__name__
    return details


def _responses(details: dict[str, Any], call: CallContext, minimal: bool) -> None:
    """A 2026-era client's ``input_responses`` and ``request_state`` (they reach the upstream
    with the arguments): as the policy step redacted them, else their names only, as the
    arguments are; the state an excerpt with recognisable secrets replaced."""
    if call.audit_input_responses is not None and not minimal:
        details["input_responses"] = call.audit_input_responses
    elif isinstance(call.input_responses, Mapping):
        details["input_responses"] = audit_names(call.input_responses)
    if call.request_state is not None:
        details["request_state"] = excerpt(call.request_state, 200)


# An upstream's error text is its own: a record keeps an excerpt of each reason (the start,
# secrets replaced: ``redact.excerpt``), and at most this many reasons.
REASONS_KEPT = 16


def _reasons(error: BaseException | None) -> list[str]:
    # validation messages and arbitrary exceptions may quote argument values: keep none
    if isinstance(error, GatewayError) and not isinstance(error, ArgumentsInvalid):
        return [excerpt(str(r)) for r in error.reasons[:REASONS_KEPT]]
    return []
