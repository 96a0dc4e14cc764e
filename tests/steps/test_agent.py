"""AgentStep in-process: a real AgentRuntime (registry, lifecycle, accounting) around an inner
endpoint that records what reached it (it stands where the upstream is).

The gateway-level runtime tests drive this step through `symbi` subprocesses, which mutation
testing cannot attribute (scripts/mutate.py); these attack each branch directly.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from gateway.chain import build_chain
from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import CallContext, Principal
from gateway.errors import AgentSuspended, AgentTerminated, PolicyDenied, UpstreamUnavailable
from gateway.runtime import AgentState
from gateway.runtime.core import AgentRuntime
from gateway.steps.agent import AgentStep

S = AgentState


class Recorder:
    """The event sink: every event the runtime emits, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details)))

    def reasons(self) -> list[str]:
        return [d["reason"] for t, d in self.events if t == "agent.state"]


class Endpoint:
    """The inner end of the chain: records each call and the agent's state while it ran."""

    def __init__(
        self, rt: AgentRuntime, *, error: Exception | None = None, result_bytes: int | None = None
    ) -> None:
        self.rt = rt
        self.error = error
        self.result_bytes = result_bytes
        self.seen: list[tuple[str, AgentState | None]] = []

    async def __call__(self, call: CallContext) -> Any:
        agent = self.rt.agents.get(call.principal.agent)
        self.seen.append((call.target, agent.state if agent is not None else None))
        call.result_bytes = self.result_bytes
        if self.error is not None:
            raise self.error
        return "result"


def setup(**runtime: Any) -> tuple[Recorder, AgentRuntime, Any, Principal]:
    rec = Recorder()
    rt = AgentRuntime(Config(runtime=RuntimeSection(**runtime)), rec)
    alice = Principal(id="alice")
    agent = rt.agents.for_session(alice, "client", "s1")
    return rec, rt, agent, Principal(id="alice", agent=agent.id)


def run(rt: AgentRuntime, ep: Endpoint, call: CallContext) -> Any:
    async def go() -> Any:
        return await build_chain([AgentStep(rt)], ep)(call)

    return anyio.run(go)


def test_a_call_runs_with_the_agent_running_and_leaves_it_ready_with_the_call_accounted() -> None:
    rec, rt, agent, p = setup()
    ep = Endpoint(rt, result_bytes=123)
    before = time.perf_counter()
    assert run(rt, ep, CallContext(principal=p, kind="tools/call", target="up__t")) == "result"
    outer = time.perf_counter() - before
    assert ep.seen == [("up__t", S.RUNNING)]
    assert agent.state is S.READY and agent.in_flight == 0 and agent.calls == 1
    usage = rt.usage_of(agent)
    assert usage.calls == 1 and usage.bytes_out == 123
    # the accounted time is the call's own: positive and within the time measured around it
    assert 0 < usage.busy_s <= outer and usage.longest_call_s == usage.busy_s
    # the task names what the call was (kind and target), on the lifecycle event
    assert "task assigned: tools/call up__t" in rec.reasons()
    assert rt.recent_errors == type(rt.recent_errors)()


def test_a_call_without_a_session_agent_passes_through_untouched() -> None:
    rec, rt, agent, _ = setup()
    ep = Endpoint(rt)
    for who in (Principal(id="alice"), Principal(id="alice", agent="no-such-agent")):
        assert run(rt, ep, CallContext(principal=who, kind="tools/call", target="t")) == "result"
    assert ep.seen == [("t", None), ("t", None)]
    assert agent.calls == 0 and agent.state is S.READY and rt.usage == {}


@pytest.mark.parametrize(("state", "error"), [(S.SUSPENDED, AgentSuspended), (S.TERMINATED, AgentTerminated)])
def test_a_stopped_agent_is_refused_before_anything_else_and_the_refusal_is_noted(
    state: AgentState, error: type[Exception]
) -> None:
    rec, rt, agent, p = setup()
    agent.state = state  # test set-up only: place the agent in the state
    ep = Endpoint(rt)
    with pytest.raises(error):
        run(rt, ep, CallContext(principal=p, kind="tools/call", target="up__t"))
    assert ep.seen == []  # never reached the upstream
    [noted] = list(rt.recent_errors)
    assert (noted["agent"], noted["code"], noted["target"]) == (agent.id, error.code, "up__t")  # type: ignore[attr-defined]
    assert agent.in_flight == 0 and rt.usage == {}  # a refused call is not accounted


def test_a_failing_call_is_noted_re_raised_and_still_ends_the_task() -> None:
    rec, rt, agent, p = setup()
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), result_bytes=7)
    with pytest.raises(UpstreamUnavailable):
        run(rt, ep, CallContext(principal=p, kind="tools/call", target="up__t"))
    assert ep.seen == [("up__t", S.RUNNING)]
    [noted] = list(rt.recent_errors)
    assert (noted["agent"], noted["code"], noted["type"]) == (
        agent.id,
        "upstream_unavailable",
        "UpstreamUnavailable",
    )
    assert noted["target"] == "up__t"
    assert agent.state is S.READY and agent.in_flight == 0
    assert rt.usage_of(agent).calls == 1 and rt.usage_of(agent).bytes_out == 7


def test_policy_denials_through_the_step_suspend_the_agent() -> None:
    rec, rt, agent, p = setup(suspend_after_denials=2, denial_window_s=600)
    ep = Endpoint(rt, error=PolicyDenied("no"))
    for _ in range(2):
        with pytest.raises(PolicyDenied):
            run(rt, ep, CallContext(principal=p, kind="tools/call", target="up__t"))
    assert agent.state is S.SUSPENDED
    with pytest.raises(AgentSuspended):  # the next call stops at the step
        run(rt, ep, CallContext(principal=p, kind="tools/call", target="up__t"))
    assert len(ep.seen) == 2
