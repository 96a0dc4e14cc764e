"""The scheduler step (innermost, right before dispatch): queue, budget, breaker, retry.

1. a policy decision with ``suspend_agent`` suspends the agent and refuses the call;
2. the call waits for a slot of the priority scheduler (priority: the policy's ``priority``
   condition, else the agent's), within its agent's and its principal's caps; a full queue
   (or the principal's share of it) refuses or preempts, never hangs; a call whose agent was
   suspended or terminated (or whose principal was suspended) while it waited is refused then;
3. it runs under the agent's execution-time budget: a breach cancels it, suspends the agent
   and answers ``BudgetExceeded``;
4. the upstream's circuit breaker is asked first (open: ``UpstreamUnavailable`` at once);
   upstream failures of read-only / idempotent tools are retried with backoff.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio

from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.deadlines import EarliestTimer
from gateway.errors import AgentSuspended, BudgetExceeded, UpstreamError
from gateway.runtime.breaker import retryable
from gateway.runtime.core import AgentRuntime


class Budget:
    """One call's execution-time budget (``Budgets.start``): its task, deadline (loop time),
    the task's pending cancellations when it started, and whether the deadline cancelled it."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = task.cancelling()
        self.expired = False

    def breached(self, error: BaseException | None) -> bool:
        """On the call's way out, as ``asyncio.Timeout.__aexit__``: the deadline's own
        cancellation is taken back, and a ``CancelledError`` that is only the deadline's is
        the breach (a caller's cancellation, or any other outcome, passes on)."""
        if not self.expired:
            return False
        return self.task.uncancel() <= self.cancelling and isinstance(error, asyncio.CancelledError)


class Budgets:
    """The execution-time budgets of the calls in flight on ONE loop timer
    (``gateway.deadlines.EarliestTimer``) instead of an ``asyncio.timeout`` per call: every
    call whose deadline has come is cancelled, as ``asyncio.Timeout`` cancels its task. Bound
    to one event loop; None from ``start`` on any other (the call then takes ``asyncio.timeout``)."""

    def __init__(self) -> None:
        self._live: set[Budget] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer = EarliestTimer(self._expire)

    def start(self, seconds: float) -> Budget | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None or not self._bound(loop):
            return None
        budget = Budget(task, loop.time() + seconds)
        self._live.add(budget)
        self._timer.include(loop, budget.deadline)
        return budget

    def stop(self, budget: Budget) -> None:
        self._live.discard(budget)

    def _bound(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._loop is loop:
            return True
        if self._loop is not None and not self._loop.is_closed():
            return False
        self._loop, self._live, self._timer = loop, set(), EarliestTimer(self._expire)
        return True

    def _expire(self, due: float) -> float:
        following = math.inf
        for budget in list(self._live):
            if budget.deadline <= due:
                self._live.discard(budget)
                budget.expired = True
                budget.task.cancel()
            elif budget.deadline < following:
                following = budget.deadline
        return following


class ScheduleStep:
    def __init__(self, runtime: AgentRuntime, builtins: frozenset[str] = frozenset()) -> None:
        self.runtime = runtime
        self.builtins = builtins  # built-in providers have no breaker (they are this process)
        self.budgets = Budgets()

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
        # the scheduler's slot and the budget held directly (Scheduler.slot's context manager
        # and an anyio cancel scope cost ~50 function calls per call): the same slot, released
        # on every exit, and the same deadline, which cancels the call in flight
        # the caller's own slots (runtime.max_in_flight_per_principal) over all its sessions and
        # agents: one API key or token cannot take every global slot from the others
        who = call.principal.qualified
        scheduler = rt.scheduler
        await scheduler.acquire(key, priority, limits.max_concurrent_calls, who)
        try:
            # its agent (or principal) may have been suspended or terminated while this call
            # waited for its slot or its decision: such a call never reaches the upstream (a
            # queue of calls behind a budget breach ran one after another, each to its budget)
            refused = rt.refused_now(agent) if agent is not None else None
            if refused is not None:
                raise refused
            breached, result = await self._budgeted(call, call_next, limits.execution_timeout_s)
        finally:
            scheduler.release(key, who)
        if not breached:
            return result
        reason = f"execution time budget of {limits.execution_timeout_s:g} s exceeded on {call.target}"
        if agent is not None:
            rt.suspend(agent, f"budget breach: {reason}")
        raise BudgetExceeded(reason, reasons=[reason, "resources.execution_timeout_s"])

    async def _budgeted(self, call: CallContext, call_next: CallNext, seconds: float) -> tuple[bool, Any]:
        """(False, the call's result), or (True, None) when its execution budget ran out first
        (the call cancelled); any other outcome of the call passes on."""
        budget = self.budgets.start(seconds)
        if budget is None:  # a call on another event loop than the budgets': asyncio's own timer
            try:
                async with asyncio.timeout(seconds) as timer:
                    return False, await self._dispatch(call, call_next)
            except TimeoutError:
                if not timer.expired():
                    raise  # the call's own TimeoutError, not the budget's
                return True, None
        try:
            result = await self._dispatch(call, call_next)
        except BaseException as e:
            self.budgets.stop(budget)
            if budget.breached(e):
                return True, None
            raise
        self.budgets.stop(budget)
        budget.breached(None)  # a deadline that came as the call returned: its cancellation taken back
        return False, result

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
            if attempt > 1:  # after the back-off: the agent may have been stopped meanwhile
                agent = self.runtime.agents.get(call.principal.agent)
                refused = self.runtime.refused_now(agent) if agent is not None else None
                if refused is not None:
                    raise refused
            probe = breakers.before(upstream)  # open: UpstreamUnavailable now, no retry
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
            except BaseException:
                if probe:  # cancelled, out of budget...: no verdict on the upstream, the next call probes
                    breakers.abandon(upstream)
                raise
            breakers.success(upstream)
            return result
        raise AssertionError("unreachable")
