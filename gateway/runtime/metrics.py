"""Prometheus view of the runtime, read at scrape time (nothing on the call path).

- ``symbi_agents{state}``: agents by lifecycle state
- ``symbi_agent_task_transitions_total{edge}``: per-call Ready <-> Running flips (each also an agent.state audit event)
- ``symbi_scheduler_queue_depth{priority}``, ``symbi_scheduler_in_flight``
- ``symbi_scheduler_admitted_total{priority}``, ``symbi_scheduler_wait_seconds_total{priority}``,
  ``symbi_scheduler_wait_seconds_max{priority}``, ``symbi_scheduler_preempted_total{priority}``
- ``symbi_scheduler_refused_total{priority,reason}``: calls refused with ``SchedulerBusy``;
  ``reason`` is ``queue_full`` (``runtime.queue_limit``) or ``principal_queue_full`` (the
  caller's ``runtime.queue_limit_per_principal``). Never by principal: that is unbounded, and
  it would show API-key names to whoever reads ``/metrics``
- ``symbi_agent_execution_seconds_total`` (all agents), per hosted agent
  ``symbi_hosted_agent_budget_ratio{agent,budget}`` (used / limit: memory, cpu, execution)
- ``symbi_upstream_breaker_state{upstream}``: 0 closed, 1 half-open, 2 open

Per-session agents are not labels (10,000 agents would be 10,000 series); hosted agents are few.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.runtime.breaker import STATE_VALUE
from gateway.runtime.core import AgentRuntime
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.scheduler import LEVELS, Scheduler


class RuntimeCollector(Collector):
    def __init__(self, runtime: Callable[[], AgentRuntime | None]) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rt = self._runtime()
        if rt is None:
            return
        yield from _agent_states(rt)
        yield from _scheduler(rt.scheduler)
        yield CounterMetricFamily(
            "symbi_agent_execution_seconds",
            "Summed call time of all agents",
            value=sum(u.busy_s for u in rt.usage.values()),
        )
        yield _budget_ratios(rt)
        breaker = GaugeMetricFamily(
            "symbi_upstream_breaker_state", "0 closed, 1 half-open, 2 open", labels=["upstream"]
        )
        for name, state in rt.breakers.states().items():
            breaker.add_metric([name], STATE_VALUE[state])
        yield breaker


def _agent_states(rt: AgentRuntime) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Agents by lifecycle state, and the per-call Ready <-> Running flips."""
    states = GaugeMetricFamily("symbi_agents", "Agents by lifecycle state", labels=["state"])
    counts = Counter(a.state for a in rt.agents)
    for s in AgentState:
        states.add_metric([s.value], counts.get(s, 0))
    yield states
    flips = CounterMetricFamily(
        "symbi_agent_task_transitions", "Per-call Ready <-> Running flips", labels=["edge"]
    )
    for edge, n in rt.agents.task_transitions.items():
        flips.add_metric([edge], n)
    yield flips


def _scheduler(sched: Scheduler) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """The scheduler's queue, admissions, waits, preemptions and refusals per priority, and its
    in-flight calls."""
    depth = GaugeMetricFamily(
        "symbi_scheduler_queue_depth", "Calls waiting, by priority", labels=["priority"]
    )
    admitted = CounterMetricFamily(
        "symbi_scheduler_admitted", "Calls admitted, by priority", labels=["priority"]
    )
    wait = CounterMetricFamily(
        "symbi_scheduler_wait_seconds", "Time calls waited, by priority", labels=["priority"]
    )
    wait_max = GaugeMetricFamily(
        "symbi_scheduler_wait_seconds_max", "Longest wait, by priority", labels=["priority"]
    )
    preempted = CounterMetricFamily(
        "symbi_scheduler_preempted", "Queued calls preempted, by priority", labels=["priority"]
    )
    for p in range(LEVELS):
        st = sched.stats[p]
        depth.add_metric([str(p)], sched.queue_depth(p))
        admitted.add_metric([str(p)], st.admitted)
        wait.add_metric([str(p)], st.wait_s_total)
        wait_max.add_metric([str(p)], st.wait_s_max)
        preempted.add_metric([str(p)], st.preempted)
    yield from (depth, admitted, wait, wait_max, preempted)
    yield _refusals(sched)
    yield GaugeMetricFamily("symbi_scheduler_in_flight", "Calls dispatched now", value=sched.in_flight)


def _refusals(sched: Scheduler) -> CounterMetricFamily:
    """Calls the scheduler shed (``SchedulerBusy``), by priority and which queue bound refused them.

    Both reasons are always present (zero included), so an alert's ``rate()`` has a series from
    the first scrape; 2 x ``LEVELS`` series at most."""
    refused = CounterMetricFamily(
        "symbi_scheduler_refused", "Calls refused, by priority and reason", labels=["priority", "reason"]
    )
    for p in range(LEVELS):
        st = sched.stats[p]
        refused.add_metric([str(p), "queue_full"], st.refused)
        refused.add_metric([str(p), "principal_queue_full"], st.refused_principal)
    return refused


def _budget_ratios(rt: AgentRuntime) -> GaugeMetricFamily:
    """Each hosted agent's use of its memory and execution-time budgets (used / limit)."""
    ratio = GaugeMetricFamily(
        "symbi_hosted_agent_budget_ratio",
        "Hosted agent budget use (used / limit)",
        labels=["agent", "budget"],
    )
    for a in rt.agents:
        if a.hosted and a.id in rt.usage:
            u, lim = rt.usage[a.id], rt.limits_of(a)
            ratio.add_metric([a.name, "memory"], u.memory_peak_mb / lim.memory_mb)
            ratio.add_metric([a.name, "execution"], u.longest_call_s / lim.execution_timeout_s)
    return ratio
