"""The runtime's Prometheus view (RuntimeCollector) read in-process through a real
prometheus_client registry: series names, labels and values from a real AgentRuntime.

Found by mutation testing (group "runtime", scripts/mutate.py): the /metrics tests scrape a
gateway subprocess, which mutmut cannot attribute, so breaking a series went unnoticed.
"""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry

from gateway.config.model import Config
from gateway.config.sections import BreakerSection, RuntimeSection
from gateway.context import Principal
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
