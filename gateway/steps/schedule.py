"""The scheduler step (innermost, right before dispatch): queue, budget, breaker, retry.

1. a policy decision with ``suspend_agent`` suspends the agent and refuses the call;
2. the call waits for a slot of the priority scheduler (priority: the policy's ``priority``
   condition, else the agent's); a full queue refuses or preempts, never hangs;
3. it runs under the agent's execution-time budget: a breach cancels it, suspends the agent
   and answers ``BudgetExceeded``;
4. the upstream's circuit breaker is asked first (open: ``UpstreamUnavailable`` at once);
   upstream failures of read-only / idempotent tools are retried with backoff.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.errors import AgentSuspended, BudgetExceeded, UpstreamError
from gateway.runtime.breaker import retryable
from gateway.runtime.core import AgentRuntime


class ScheduleStep:
    def __init__(self, runtime: AgentRuntime, builtins: frozenset[str] = frozenset()) -> None:
        self.runtime = runtime
        self.builtins = builtins  # built-in providers have no breaker (they are this process)

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        rt = self.runtime
        agent = rt.agents.get(call.principal.agent)
        cond = call.decision.conditions if call.decision is not None else {}
        if agent is not None and "suspend_agent" in cond:
            reason = f"policy violation: {cond['suspend_agent']}"
            rt.suspend(agent, reason)
            raise AgentSuspended(f"agent {agent.name} is suspended by the policy", reasons=[reason])
        limits = rt.limits_of(agent) if agent is not None else rt.default_limits
        default = agent.priority if agent is not None else rt.config.runtime.default_priority
        priority = int(cond.get("priority", default))
        key = agent.id if agent is not None else f"principal:{call.principal.id}"
        call.sandbox_budget = {
            "memory_mb": limits.memory_mb,
            "cpus": limits.cpu_cores,
            "timeout_s": limits.execution_timeout_s,
        }
        # the scheduler's slot and the budget's timer held directly (Scheduler.slot's context
        # manager and an anyio cancel scope cost ~50 function calls per call): the same slot,
        # released on every exit, and the same deadline, which cancels the call in flight
        scheduler = rt.scheduler
        await scheduler.acquire(key, priority, limits.max_concurrent_calls)
        try:
            async with asyncio.timeout(limits.execution_timeout_s) as budget:
                return await self._dispatch(call, call_next)
        except TimeoutError:
            if not budget.expired():
                raise  # the call's own TimeoutError, not the budget's
        finally:
            scheduler.release(key)
        reason = f"execution time budget of {limits.execution_timeout_s:g} s exceeded on {call.target}"
        if agent is not None:
            rt.suspend(agent, f"budget breach: {reason}")
        raise BudgetExceeded(reason, reasons=[reason, "resources.execution_timeout_s"])

    async def _dispatch(self, call: CallContext, call_next: CallNext) -> Any:
        upstream = (
            call.tool.upstream if call.tool is not None else (call.upstream.name if call.upstream else None)
        )
        if upstream is None or upstream in self.builtins:
            return await call_next(call)
        breakers = self.runtime.breakers
        retry = self.runtime.config.runtime.retry
        attempts = retry.attempts if call.tool is not None and retryable(call.tool.annotations) else 1
        delay = retry.backoff_s
        for attempt in range(1, attempts + 1):
            breakers.before(upstream)  # open: UpstreamUnavailable now, no retry
            try:
                result = await call_next(call)
            except UpstreamError as e:
                if getattr(e, "mcp_error", None) is not None:
                    breakers.success(upstream)  # the upstream answered (with its own error): it is alive
                    raise
                breakers.failure(upstream)
                if attempt == attempts:
                    raise
                await anyio.sleep(delay)
                delay = min(delay * 2, retry.backoff_max_s)
                continue
            breakers.success(upstream)
            return result
        raise AssertionError("unreachable")
