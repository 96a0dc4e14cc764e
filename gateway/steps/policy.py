"""The policy step: ask the Rego policy, refuse or apply its conditions around the dispatch.

Order of work for one call:
1. reserve the call with the rate limiter (``gateway.state.limiter``: the recent-call counts,
   in this process or shared by the replicas on Redis; unreachable: refused), which counts it
   at once (calls whose decisions are awaited together each read the ones reserved before
   them), build the input document (``gateway.policy.inputdoc``) and get a ``Decision``;
2. deny -> ``PolicyDenied(reasons)``; the call never reaches the upstream (and is released);
3. ``rate_limit`` -> sliding one-minute window per principal+tool (``RateLimited`` at the limit,
   released); an admitted call stays counted;
4. ``redact_arguments`` -> the upstream and the audit log get a redacted copy (of the
   arguments, and of each answer in a 2026 client's ``input_responses``);
5. ``sandbox_tier`` -> ``call.sandbox_tier`` (the dispatcher runs code tools in it);
6. after the call: ``redact_result`` then ``max_result_bytes`` on the result, wherever its
   text reaches the client (``gateway.policy.results``: content, ``_meta``, an upstream's
   JSON-RPC error; the progress messages are the dispatcher's, ``Gateway._call_tool``);
   ``call.result_bytes`` is the size the upstream produced, before any cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mcp.types import CallToolResult
from pydantic import BaseModel, ValidationError

from gateway.chain import CallNext
from gateway.context import AgentInfo, CallContext, Decision, Principal, ToolInfo, UpstreamInfo
from gateway.errors import PolicyDenied, RateLimited, UpstreamError
from gateway.policy.engine import PolicyEngine
from gateway.policy.inputdoc import CallCounters, input_for_call, listing_inputs, responses_json
from gateway.policy.redact import audit_copy, audit_key, redact_with_audit
from gateway.policy.results import cap_result, error_under, redact_other, redact_result, result_size
from gateway.policy.together import Together
from gateway.state.limiter import LocalRateLimiter, RateLimiter, Reservation


class PolicyStep:
    """Decide every call with ``engine`` and enforce the decision's conditions."""

    def __init__(
        self,
        engine: PolicyEngine,
        counters: CallCounters | None = None,
        *,
        observe: Callable[[float], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.engine = engine
        self.counters = counters if counters is not None else CallCounters()
        self.limiter = limiter if limiter is not None else LocalRateLimiter(self.counters)
        self._observe = observe  # decision latency in seconds (the /metrics histogram)
        self._together = Together()  # decisions while other calls are in flight
        self._in_flight = 0  # calls inside this step (deciding, or at the upstream)

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        self._in_flight += 1  # until the upstream answered: the calls a decision may wait beside
        try:
            cond = await self._decide(call)
            rules: Sequence[str] = cond.get("redact_arguments", ())
            # what the upstream receives (redacted by the rules), and what the log keeps (that,
            # with no recognisable secret left): one copy and one scrub of each value for both
            call.arguments, call.audit_arguments = redact_with_audit(call.arguments, rules)
            if call.input_responses is not None:  # a 2026-era client's answers go upstream too
                call.input_responses, call.audit_input_responses = redact_responses(
                    call.input_responses, rules
                )
            if "sandbox_tier" in cond:
                call.sandbox_tier = cond["sandbox_tier"]
            try:
                result = await call_next(call)
            except UpstreamError as e:  # the upstream's own error reaches the client: as a result would
                if e.mcp_error is None or not cond:
                    raise
                raise error_under(e, cond, _upstream_of(call)) from None
        finally:
            self._in_flight -= 1
        return _result_under(call, cond, result)

    async def _decide(self, call: CallContext) -> Mapping[str, Any]:
        """The decision's conditions for an allowed call under its rate limit, the call then
        counted; else ``PolicyDenied`` / ``RateLimited``, the call's count taken back."""
        name = call.tool.name if call.tool else call.target
        held = await self.limiter.reserve(call.principal.qualified, name)  # one round trip on Redis
        try:
            if not self.engine.decides_inline:
                started = time.perf_counter()  # the decision's latency: OPA's round trip, not the limiter's
                decision = await self.engine.adecide(input_for_call(call, held.counts))
                return self._admit(call, held, decision, started)
            if self._in_flight > 1:  # others may ask in this turn: decided back to back
                return await self._together.run(lambda: self._decide_now(call, held))
            return self._decide_now(call, held)
        except BaseException:  # denied, refused, failed or cancelled: its count is taken back
            await held.release()
            raise

    def _decide_now(self, call: CallContext, held: Reservation) -> Mapping[str, Any]:
        """Input, decision and admission with no wait between them: the counts a decision reads
        include every call reserved before it and not released when it was reserved (a cap
        such as ``max_calls_per_hour`` holds for calls decided together). Timed from here: a
        wait for the batch is not the decision's."""
        started = time.perf_counter()
        return self._admit(call, held, self.engine.decide(input_for_call(call, held.counts)), started)

    def _admit(
        self, call: CallContext, held: Reservation, decision: Decision, started: float
    ) -> Mapping[str, Any]:
        """``decision`` applied: its conditions, the call counted; or refused (not counted)."""
        if self._observe is not None:
            self._observe(time.perf_counter() - started)
        call.decision = decision
        if not decision.allow:
            call.reasons = list(decision.reasons)
            raise PolicyDenied(f"policy denied {call.target}", reasons=list(decision.reasons))
        cond = decision.conditions
        limit = cond.get("rate_limit")
        if not held.admit(limit):
            name = call.tool.name if call.tool else call.target
            reason = f"rate limit of {limit} calls per minute reached for {call.principal.id} on {name}"
            call.reasons = [reason]
            raise RateLimited(reason)
        return cond


def _result_under(call: CallContext, cond: Mapping[str, Any], result: Any) -> Any:
    """``result`` under the decision's result conditions (``redact_result``, then
    ``max_result_bytes``), ``call.result_bytes`` the size the upstream produced."""
    if isinstance(result, CallToolResult):
        produced = result
        call.result_bytes = result_size(result)
        if cond.get("redact_result"):
            result = redact_result(result, cond["redact_result"])
        if "max_result_bytes" in cond:
            # the size measured above is the capped result's unless the redaction made another
            size = call.result_bytes if result is produced else None
            result = cap_result(result, cond["max_result_bytes"], size, tool=call.tool)
    elif hasattr(result, "model_dump_json"):
        call.result_bytes = size = result_size(result)
        if cond.get("redact_result"):
            result = redact_other(result, cond["redact_result"])
            size = result_size(result) if "max_result_bytes" in cond else size
        cap = cond.get("max_result_bytes")
        if cap is not None and size > cap:
            # resources / prompts have no isError form: refuse rather than cut them
            raise PolicyDenied(
                "result too large",
                reasons=[f"result of {size} bytes exceeds the cap of {cap} bytes"],
            )
    return result


def _upstream_of(call: CallContext) -> str:
    if call.tool is not None:
        return call.tool.upstream
    return call.upstream.name if call.upstream is not None else "?"


def redact_responses(responses: Any, rules: Sequence[str]) -> tuple[Any, Any]:
    """(``input_responses`` for the upstream, for the audit) under the arguments' rules, each
    answer on its own (its key names the upstream's question, not a value). An answer the
    rules change is sent as its redacted copy, parsed again into its own model; one that is no
    longer a valid answer then (a rule named a field the model needs) is refused, naming it."""
    if not isinstance(responses, Mapping):
        return responses, audit_copy(responses)
    plain = responses_json(responses)
    out: dict[str, Any] = {}
    audit: dict[str, Any] = {}
    for k, v in responses.items():
        red, audit[audit_key(k, responses, audit)] = redact_with_audit(plain[k], rules)
        if red == plain[k] or not isinstance(v, BaseModel):
            out[k] = v if red == plain[k] else red
            continue
        try:
            out[k] = type(v).model_validate(red)
        except ValidationError:
            reason = f"input_responses/{k}: the redaction rules leave no valid {type(v).__name__}"
            raise PolicyDenied("input response refused: it cannot be redacted", reasons=[reason]) from None
    return out, audit


def filter_listing(
    engine: PolicyEngine,
    principal: Principal,
    tools: Sequence[ToolInfo],
    *,
    upstreams: Mapping[str, UpstreamInfo] | None = None,
    session_id: str | None = None,
    agent: AgentInfo | None = None,
) -> list[ToolInfo]:
    """The tools ``principal`` may see: each one decided with ``action = "list"`` (no arguments).

    The policy's argument and volume rules apply to calls only (a listing's counters are zero:
    ``gateway.policy.inputdoc``), so a tool is listed exactly when some call to it could be
    allowed; a tool that is not listed is refused by name too, because the call decision uses
    the same allow-list.
    """
    inputs = listing_inputs(principal, tools, upstreams=upstreams, session_id=session_id, agent=agent)
    return [t for t, inp in zip(tools, inputs, strict=True) if engine.decide(inp).allow]


async def afilter_listing(
    engine: PolicyEngine,
    principal: Principal,
    tools: Sequence[ToolInfo],
    *,
    upstreams: Mapping[str, UpstreamInfo] | None = None,
    session_id: str | None = None,
    agent: AgentInfo | None = None,
) -> list[ToolInfo]:
    """Async ``filter_listing``: concurrent decisions for an engine that awaits (a remote OPA);
    an engine that decides inline (regorus holds the GIL) is asked in turn, without a task per
    tool."""
    if engine.decides_inline:
        return filter_listing(
            engine, principal, tools, upstreams=upstreams, session_id=session_id, agent=agent
        )
    inputs = listing_inputs(principal, tools, upstreams=upstreams, session_id=session_id, agent=agent)
    decisions = await asyncio.gather(*(engine.adecide(i) for i in inputs))
    return [t for t, d in zip(tools, decisions, strict=True) if d.allow]


async def listed(
    engine: PolicyEngine,
    principal: Principal,
    tool: ToolInfo,
    *,
    session_id: str | None = None,
    agent: AgentInfo | None = None,
) -> bool:
    """Whether ``afilter_listing`` would list ``tool``: the same listing decision, one tool."""
    (doc,) = listing_inputs(principal, (tool,), session_id=session_id, agent=agent)
    decision = engine.decide(doc) if engine.decides_inline else await engine.adecide(doc)
    return decision.allow
