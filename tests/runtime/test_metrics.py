"""The runtime's Prometheus view (RuntimeCollector) read in-process through a real
prometheus_client registry: series names, labels and values from a real AgentRuntime.

Found by mutation testing (group "runtime", scripts/mutate.py): the /metrics tests scrape a
gateway subprocess, which mutmut cannot attribute, so breaking a series went unnoticed.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.model import Config
from gateway.config.sections import BreakerSection, RuntimeSection
from gateway.context import Principal
from gateway.errors import SchedulerBusy
from gateway.metrics import GatewayMetrics
from gateway.runtime import AgentState
from gateway.runtime.core import AgentRuntime
from gateway.runtime.metrics import RuntimeCollector
from gateway.runtime.scheduler import LEVELS
from tests.runtime.test_core import Recorder


def _scrape(rt: AgentRuntime | None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(RuntimeCollector(lambda: rt))
    return reg


def test_no_runtime_no_series() -> None:
    assert [m.name for m in _scrape(None).collect()] == []


def test_agents_by_state_and_task_transitions() -> None:
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice")
    ready, running, gone = (rt.agents.for_session(alice, "c", s) for s in ("s1", "s2", "s3"))
    rt.begin(running, "t")
    rt.begin(gone, "t")
    rt.end(gone, 0.5)
    rt.terminate(gone, "operator")
    reg = _scrape(rt)
    states = {s.value: reg.get_sample_value("symbi_agents", {"state": s.value}) for s in AgentState}
    assert states == {
        s.value: {"Ready": 1.0, "Running": 1.0, "Terminated": 1.0}.get(s.value, 0.0) for s in AgentState
    }
    assert reg.get_sample_value("symbi_agent_task_transitions_total", {"edge": "task assigned"}) == 2.0
    assert reg.get_sample_value("symbi_agent_task_transitions_total", {"edge": "task complete"}) == 1.0
    assert reg.get_sample_value("symbi_agent_execution_seconds_total") == 0.5
    assert ready.state is AgentState.READY


def test_scheduler_series_per_priority_level() -> None:
    rt = AgentRuntime(Config(), Recorder())
    st = rt.scheduler.stats[3]
    st.admitted, st.wait_s_total, st.wait_s_max, st.preempted = (
        4,
        1.5,
        1.0,
        2,
    )  # as a run of the scheduler leaves them
    rt.scheduler.in_flight = 2
    reg = _scrape(rt)
    for p in range(LEVELS):
        labels = {"priority": str(p)}
        want = (4.0, 1.5, 1.0, 2.0) if p == 3 else (0.0, 0.0, 0.0, 0.0)
        got = tuple(
            reg.get_sample_value(n, labels)
            for n in (
                "symbi_scheduler_admitted_total",
                "symbi_scheduler_wait_seconds_total",
                "symbi_scheduler_wait_seconds_max",
                "symbi_scheduler_preempted_total",
            )
        )
        assert got == want and reg.get_sample_value("symbi_scheduler_queue_depth", labels) == 0.0
    assert reg.get_sample_value("symbi_scheduler_in_flight") == 2.0


def test_hosted_budget_ratios_and_breaker_states() -> None:
    rt = AgentRuntime(Config(runtime=RuntimeSection(breaker=BreakerSection(failures=1))), Recorder())
    run = rt.agents.add_hosted("a", Principal(id="agent:a", kind="agent", source="key"), priority=4, run=1)
    session = rt.agents.for_session(Principal(id="alice"), "c", "s1")
    rt.limits[run.id] = dataclasses.replace(rt.default_limits, memory_mb=200, execution_timeout_s=60.0)
    u = rt.usage_of(run)
    u.memory_peak_mb, u.longest_call_s = 50.0, 15.0
    rt.usage_of(session).memory_peak_mb = 10.0  # session agents are not labels
    rt.breakers.failure("down")
    rt.breakers.success("up")
    reg = _scrape(rt)
    assert reg.get_sample_value("symbi_hosted_agent_budget_ratio", {"agent": "a", "budget": "memory"}) == 0.25
    assert (
        reg.get_sample_value("symbi_hosted_agent_budget_ratio", {"agent": "a", "budget": "execution"}) == 0.25
    )
    ratios = [s for m in reg.collect() if m.name == "symbi_hosted_agent_budget_ratio" for s in m.samples]
    assert {s.labels["agent"] for s in ratios} == {"a"}
    assert reg.get_sample_value("symbi_upstream_breaker_state", {"upstream": "down"}) == 2.0
    assert reg.get_sample_value("symbi_upstream_breaker_state", {"upstream": "up"}) == 0.0


def test_scheduler_refusals_by_priority_and_reason_in_the_rendered_text() -> None:
    """A real scheduler sheds two calls at the caller's queue share and one at the full queue;
    ``GatewayMetrics.render`` (track_runtime) shows each under its reason, never a principal."""
    runtime = RuntimeSection(
        max_in_flight=1, queue_limit=2, max_in_flight_per_principal=1, queue_limit_per_principal=1
    )
    rt = AgentRuntime(Config(runtime=runtime), Recorder())
    sched = rt.scheduler

    async def main() -> None:
        await sched.acquire("a", 3, 8, "key:a")  # the one slot
        a_queued = asyncio.create_task(sched.acquire("a", 3, 8, "key:a"))
        await asyncio.sleep(0)
        for _ in range(2):
            with pytest.raises(SchedulerBusy):  # key:a already has its one queued call
                await sched.acquire("a", 3, 8, "key:a")
        b_queued = asyncio.create_task(sched.acquire("b", 3, 8, "key:b"))  # the queue is full now
        await asyncio.sleep(0)
        with pytest.raises(SchedulerBusy) as busy:  # key:c has no queued call: the whole queue is full
            await sched.acquire("c", 3, 8, "key:c")
        assert type(busy.value) is SchedulerBusy  # refused, not a preemption
        for waiter, (agent, principal) in ((a_queued, ("a", "key:a")), (b_queued, ("b", "key:b"))):
            sched.release(agent, principal)
            await waiter
        sched.release("b", "key:b")

    asyncio.run(main())
    metrics = GatewayMetrics()
    metrics.track_runtime(lambda: rt)
    fams = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    refused = {
        (s.labels["priority"], s.labels["reason"]): s.value
        for s in fams["symbi_scheduler_refused"].samples
        if s.name == "symbi_scheduler_refused_total"
    }
    want = {(str(p), r): 0.0 for p in range(LEVELS) for r in ("queue_full", "principal_queue_full")}
    assert refused == {**want, ("3", "queue_full"): 1.0, ("3", "principal_queue_full"): 2.0}
    assert fams["symbi_scheduler_refused"].type == "counter"
    assert sched.refused_per_principal == 2  # /api/status's figure is the same count
    assert not any("principal" in s.labels for f in fams.values() for s in f.samples)
    assert (sched.in_flight, sched.queue_depth()) == (0, 0)
