"""The seed's lifecycle, exactly: every valid transition, every invalid pair, one event each;
and the runtime's use of it (calls, denials, operator actions, the sweep, admission)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import Principal
from gateway.errors import (
    AgentLimitReached,
    AgentSuspended,
    AgentTerminated,
    InvalidTransition,
    PolicyDenied,
    PolicyError,
    UpstreamUnavailable,
)
from gateway.runtime import AgentRegistry, AgentState
from gateway.runtime.core import AgentRuntime
from gateway.runtime.lifecycle import TRANSITIONS

S = AgentState
ALICE = Principal(id="alice")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details), agent))

    def states(self) -> list[tuple[str, str]]:
        return [(d["from"], d["to"]) for t, d, _ in self.events if t == "agent.state"]


def _agent_in(state: AgentState) -> tuple[Recorder, AgentRegistry, Any]:
    rec = Recorder()
    reg = AgentRegistry(rec)
    agent = reg.for_session(ALICE, "c", "stdio")
    agent.state = state  # test set-up only: place the agent in the source state
    rec.events.clear()
    return rec, reg, agent


@pytest.mark.parametrize(("src", "dst"), sorted(TRANSITIONS))
def test_every_valid_transition_writes_exactly_one_event(src: AgentState, dst: AgentState) -> None:
    rec, reg, agent = _agent_in(src)
    reg.transition(agent, dst, "because")
    assert agent.state is dst
    [(kind, details, agent_id)] = rec.events
    assert kind == "agent.state" and agent_id == agent.id
    assert (details["from"], details["to"], details["reason"]) == (src.value, dst.value, "because")
    assert details["edge"] == TRANSITIONS[(src, dst)]


INVALID = [(a, b) for a, b in itertools.product(S, S) if (a, b) not in TRANSITIONS]


def test_the_seed_has_nine_edges_and_twenty_seven_refused_pairs() -> None:
    assert len(TRANSITIONS) == 9 and len(INVALID) == 27


@pytest.mark.parametrize(("src", "dst"), INVALID)
def test_every_other_pair_is_refused_without_an_event(src: AgentState, dst: AgentState) -> None:
    rec, reg, agent = _agent_in(src)
    with pytest.raises(InvalidTransition):
        reg.transition(agent, dst, "nope")
    assert agent.state is src and rec.events == []


def _runtime(**runtime: Any) -> tuple[Recorder, AgentRuntime]:
    rec = Recorder()
    cfg = Config(runtime=RuntimeSection(**runtime))
    return rec, AgentRuntime(cfg, rec)


def test_a_call_makes_the_agent_running_and_the_last_call_ready_again() -> None:
    rec, rt = _runtime()
    a = rt.agents.for_session(ALICE, "c", "stdio")
    rt.begin(a, "x")
    rt.begin(a, "y")  # a second call in flight: no transition
    assert a.state is S.RUNNING
    rt.end(a, 0.01)
    assert a.state is S.RUNNING
    rt.end(a, 0.02)
    assert a.state is S.READY  # type: ignore[comparison-overlap]  # the call above changed it
    # every transition is one event, the per-call flips included (and they are counted)
    assert rec.states() == [("Initializing", "Ready"), ("Ready", "Running"), ("Running", "Ready")]
    assert rt.agents.task_transitions == {"task assigned": 1, "task complete": 1}
    assert rt.usage_of(a).calls == 2


def test_a_suspension_during_a_call_is_audited_from_running() -> None:
    rec, rt = _runtime()
    a = rt.agents.for_session(ALICE, "c", "stdio")
    rt.begin(a, "t")
    assert rt.suspend(a, "operator") != "pending" and a.state is S.SUSPENDED
    assert rec.states() == [("Initializing", "Ready"), ("Ready", "Running"), ("Running", "Suspended")]


def test_denials_within_the_window_suspend_and_suspended_calls_are_refused() -> None:
    rec, rt = _runtime(suspend_after_denials=3, denial_window_s=60)
    a = rt.agents.for_session(ALICE, "c", "stdio")
    for _ in range(2):
        rt.begin(a, "t")
        rt.note_error(a, PolicyDenied("no"), "t")
        rt.end(a)
    rt.begin(a, "t")
    rt.note_error(a, PolicyError("engine down"), "t")  # not the agent's doing: not counted
    rt.note_error(a, UpstreamUnavailable("down"), "t")
    assert a.state is S.RUNNING
    rt.note_error(a, PolicyDenied("no"), "t")  # the third denial
    assert a.state is S.SUSPENDED  # type: ignore[comparison-overlap]  # the call above changed it
    rt.end(a)
    assert a.state is S.SUSPENDED  # the end of a call does not clear a suspension
    with pytest.raises(AgentSuspended):
        rt.begin(a, "t")
    assert rt.resume(a, "operator") == "resumed"
    assert rec.states()[-3:] == [("Running", "Suspended"), ("Suspended", "Running"), ("Running", "Ready")]
    rt.begin(a, "t")
    assert a.state is S.RUNNING


def test_suspending_a_ready_agent_takes_effect_at_its_next_task() -> None:
    rec, rt = _runtime()
    a = rt.agents.for_session(ALICE, "c", "stdio")
    assert rt.suspend(a, "operator") == "pending" and a.state is S.READY
    with pytest.raises(AgentSuspended):
        rt.begin(a, "t")
    assert a.state is S.SUSPENDED and a.in_flight == 0  # type: ignore[comparison-overlap]  # the call above changed it
    assert rec.states()[-2:] == [("Ready", "Running"), ("Running", "Suspended")]
    assert rt.agents.task_transitions["task assigned"] == 1


def test_terminate_paths() -> None:
    rec, rt = _runtime()
    a = rt.agents.for_session(ALICE, "c", "s1")
    assert rt.terminate(a, "shutdown") == "terminated" and a.state is S.TERMINATED
    b = rt.agents.for_session(ALICE, "c", "s2")
    rt.begin(b, "t")
    assert rt.terminate(b, "operator").startswith("terminating")
    with pytest.raises(AgentTerminated):
        rt.begin(b, "u")  # no new work while it ends
    rt.end(b)
    assert b.state is S.TERMINATED
    assert rec.states()[-2:] == [("Running", "Ready"), ("Ready", "Terminated")]
    assert rt.agents.task_transitions["task complete"] == 1
    c = rt.agents.for_session(ALICE, "c", "s3")
    rt.begin(c, "t")
    rt.suspend(c, "x")
    assert rt.terminate(c, "operator") == "terminated"
    assert rec.states()[-1] == ("Suspended", "Terminated")


def test_sweep_ends_idle_sessions_then_removes_them() -> None:
    rec, rt = _runtime(agent_idle_timeout_s=5, gc_batch=10)
    a = rt.agents.for_session(ALICE, "c", "s1")
    busy = rt.agents.for_session(ALICE, "c", "s2")
    rt.begin(busy, "t")
    now = a.last_seen + 6
    rt.sweep(now)
    assert a.state is S.TERMINATED and busy.state is S.RUNNING
    assert rt.sweep(now) == 1 and rt.agents.get(a.id) is None
    assert rec.states()[-1] == ("Ready", "Terminated")


def test_a_closed_session_ends_its_agents_and_frees_their_places() -> None:
    _, rt = _runtime(max_concurrent_agents=3, gc_batch=10)
    idle = rt.agents.for_session(ALICE, "c", "http:s1")
    busy = rt.agents.for_session(ALICE, "other-client", "http:s1")
    keep = rt.agents.for_session(ALICE, "c", "http:s2")
    rt.begin(busy, "t")
    with pytest.raises(AgentLimitReached):
        rt.agents.for_session(ALICE, "c", "http:s3")
    assert rt.close_session("http:s1", "closed") == 2
    assert idle.state is S.TERMINATED and busy.state is S.RUNNING  # a call in flight finishes first
    with pytest.raises(AgentTerminated):
        rt.begin(busy, "u")
    rt.end(busy)
    assert busy.state is S.TERMINATED and keep.state is S.READY  # type: ignore[comparison-overlap]  # the call above changed it
    rt.sweep()
    assert rt.agents.of_session("http:s1") == [] and rt.agents.get(idle.id) is None
    assert rt.agents.for_session(ALICE, "c", "http:s3").state is S.READY  # the places are free again
    assert rt.close_session("http:nosuch", "closed") == 0


def test_admission_beyond_max_concurrent_agents_is_a_clear_error() -> None:
    _, rt = _runtime(max_concurrent_agents=2)
    a = rt.agents.for_session(ALICE, "c", "s1")
    rt.agents.for_session(ALICE, "c", "s2")
    with pytest.raises(AgentLimitReached):
        rt.agents.for_session(ALICE, "c", "s3")
    rt.terminate(a, "shutdown")  # a terminated agent no longer counts
    assert rt.agents.for_session(ALICE, "c", "s3").state is S.READY
