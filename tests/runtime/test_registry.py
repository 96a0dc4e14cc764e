"""AgentRegistry in-process: the hosted agents' identity and records, and an operator's
termination of a session holding (the session gets no new agent).

Found by mutation testing (group "runtime", scripts/mutate.py): the principal and the fields
a hosted run is registered with, the ended-sessions memory and its bound were not checked.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.config.sections import AgentConfig, RuntimeSection
from gateway.context import AgentInfo, Principal
from gateway.errors import AgentLimitReached, AgentTerminated
from gateway.runtime import AgentState, agents
from gateway.runtime.agents import AgentRegistry, hosted_principal
from gateway.runtime.core import AgentRuntime
from tests.runtime.test_core import Recorder


def test_a_hosted_agent_runs_as_an_agent_principal_authenticated_by_its_key() -> None:
    p = hosted_principal("mailer", AgentConfig(command="x", roles=("reader", "sender")))
    assert p == Principal(id="agent:mailer", kind="agent", roles=("reader", "sender"), source="key")
    named = hosted_principal("mailer", AgentConfig(command="x", principal="svc-mail"))
    assert (named.id, named.kind, named.roles, named.source) == ("svc-mail", "agent", (), "key")


def test_a_hosted_run_is_registered_with_its_principal_roles_session_and_priority() -> None:
    reg = AgentRegistry(Recorder())
    p = Principal(id="agent:a", kind="agent", roles=("r",), source="key")
    run = reg.add_hosted("a", p, priority=7, run=3)
    assert (run.name, run.principal, run.principal_kind, run.roles) == ("a", "agent:a", "agent", ("r",))
    assert (run.client, run.session, run.owner) == ("hosted:a", "hosted:a:3", p.qualified)
    assert run.hosted is True and run.priority == 7 and run.state is AgentState.INITIALIZING
    assert reg.info(run.id) == AgentInfo(id=run.id, name="a", state="Initializing", priority=7, hosted=True)
    assert reg.info("agt-nosuch") is None and reg.info(None) is None


def test_hosted_ids_are_stable_per_name_and_distinct_between_names() -> None:
    reg = AgentRegistry(Recorder(), key=b"k" * 32)
    assert reg.hosted_id("a", "agent:x") == AgentRegistry(Recorder(), key=b"k" * 32).hosted_id("a", "agent:x")
    # two hosted agents under one principal are two agents (messages, memory and budgets are per id)
    assert reg.hosted_id("a", "agent:x") != reg.hosted_id("b", "agent:x")
    assert reg.hosted_id("a", "agent:x") != reg.hosted_id("a", "agent:y")


def test_a_terminated_session_gets_no_new_agent() -> None:
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice")
    a = rt.agents.for_session(alice, "c", "s1")
    assert rt.terminate(a, "operator: compromised") == "terminated"
    with pytest.raises(AgentTerminated):
        rt.agents.for_session(alice, "c", "s1")
    assert rt.agents.for_session(alice, "c", "s2").state is AgentState.READY  # other sessions are not ended


def test_ended_sessions_are_bounded_forgetting_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents, "ENDED_SESSIONS", 3)
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice")
    for s in ("s1", "s2", "s3", "s4"):
        rt.terminate(rt.agents.for_session(alice, "c", s), "operator")
    assert rt.agents.for_session(alice, "c", "s1").state is AgentState.READY  # the oldest is forgotten
    for s in ("s2", "s3", "s4"):
        with pytest.raises(AgentTerminated):
            rt.agents.for_session(alice, "c", s)


def test_begin_marks_the_agent_seen_before_its_call_ends() -> None:
    rt = AgentRuntime(Config(), Recorder())
    a = rt.agents.for_session(Principal(id="alice"), "c", "s1")
    a.last_seen = 0.0  # test set-up: seen long ago
    rt.begin(a, "t")
    assert isinstance(a.last_seen, float) and a.last_seen > 0.0
    assert a.state is AgentState.RUNNING


def test_a_session_agent_carries_its_principal_and_is_seen_again_on_each_lookup() -> None:
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice", kind="service", roles=("reader",))
    a = rt.agents.for_session(alice, "c", "s1")
    assert (a.principal, a.principal_kind, a.roles, a.owner) == (
        "alice",
        "service",
        ("reader",),
        alice.qualified,
    )
    a.last_seen = 0.0  # test set-up: seen long ago
    assert rt.agents.for_session(alice, "c", "s1") is a and isinstance(a.last_seen, float) and a.last_seen > 0
    assert all(d["reason"] for t, d, _, _ in rt.events.events if t == "agent.state")  # type: ignore[attr-defined]
    nobody = rt.agents.for_session(Principal(id=""), None, "s2")
    assert re.fullmatch(r"stdio:anonymous~[a-z2-7]{10}/unknown", nobody.name)  # labels for what was not given


def test_agents_remade_after_their_session_closed_get_fresh_distinct_ids() -> None:
    rt = AgentRuntime(Config(), Recorder())
    alice, bob = Principal(id="alice"), Principal(id="bob")
    keys = [(alice, "c", "s"), (alice, "d", "s"), (bob, "c", "s"), (alice, "c", "t")]
    first = [rt.agents.for_session(*k) for k in keys]
    assert rt.close_session("s", "closed") == 3 and rt.close_session("t", "closed") == 1
    again = [rt.agents.for_session(*k) for k in keys]
    ids = [a.id for a in first + again]
    assert len(set(ids)) == len(ids) and all(i.startswith("agt-") for i in ids)
    assert all(a.state is AgentState.READY for a in again)


def test_removing_one_agent_of_a_session_keeps_the_others_listed_for_it() -> None:
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice")
    a = rt.agents.for_session(alice, "c", "s")
    b = rt.agents.for_session(alice, "d", "s")
    rt.terminate(a, "operator")
    rt.agents.remove(a)
    rt.agents.remove(a)  # twice: nothing left to remove
    assert rt.agents.of_session("s") == [b] and rt.agents.get(a.id) is None
    assert rt.close_session("s", "closed") == 1 and b.state is AgentState.TERMINATED


def test_client_labels() -> None:
    from gateway.runtime.identity import clean_label

    assert clean_label("XclaudeX") == "XclaudeX"
    assert clean_label("--bob/x--") == "bob-x"
    assert clean_label(None) == "unknown" and clean_label("", "anonymous") == "anonymous"
    assert clean_label("a" * 100) == "a" * 64


def test_agents_of_http_sessions_and_remade_agents_are_ephemeral_others_are_not() -> None:
    """Found by mutation testing (group "runtime-security"): an ephemeral agent's bus identity is
    not kept (gateway/bus/assemble.py); an stdio session's first agent must keep it."""
    rt = AgentRuntime(Config(), Recorder())
    alice = Principal(id="alice")
    stdio = rt.agents.for_session(alice, "c", "stdio")
    http = rt.agents.for_session(alice, "c", f"{agents.HTTP_SESSION}abc")
    assert stdio.ephemeral is False and http.ephemeral is True
    rt.close_session("stdio", "closed")
    assert rt.agents.for_session(alice, "c", "stdio").ephemeral is True  # remade: a new identity


def test_a_terminated_agent_gives_back_exactly_one_place() -> None:
    """Three of three places taken, one agent terminated: one more agent fits, the next does not."""
    rt = AgentRuntime(Config(runtime=RuntimeSection(max_concurrent_agents=3)), Recorder())
    alice = Principal(id="alice")
    first = [rt.agents.for_session(alice, "c", s) for s in ("s1", "s2", "s3")]
    rt.terminate(first[0], "shutdown")
    rt.agents.for_session(alice, "c", "s4")
    with pytest.raises(AgentLimitReached):
        rt.agents.for_session(alice, "c", "s5")


class _Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object], str | None, str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details), principal, agent))


def test_a_transition_records_one_full_event_runs_each_hook_and_counts_task_edges() -> None:
    """Found by mutation testing (group "runtime-security"): the agent.state event's fields and
    principal, what a state hook is given, and the task-edge counters behind
    symbi_agent_task_transitions_total; a failing hook does not stop the transition."""
    rec = _Events()
    reg = AgentRegistry(rec)
    hooked: list[tuple[str, AgentState, AgentState]] = []

    def broken(agent: agents.Agent, src: AgentState, dst: AgentState) -> None:
        raise RuntimeError("a subscriber failed")

    reg.on_state.append(broken)
    reg.on_state.append(lambda a, src, dst: hooked.append((a.id, src, dst)))
    a = reg.for_session(Principal(id="alice"), "c", "stdio")
    for _ in range(2):
        reg.transition(a, AgentState.RUNNING, "task assigned: t")
        reg.transition(a, AgentState.READY, "done")
    assert reg.task_transitions == {"task assigned": 2, "task complete": 2}
    assert rec.events[-1] == (
        "agent.state",
        {
            "agent": a.id,
            "name": a.name,
            "from": "Running",
            "to": "Ready",
            "edge": "task complete",
            "reason": "done",
        },
        "alice",
        a.id,
    )
    assert hooked[-2:] == [
        (a.id, AgentState.READY, AgentState.RUNNING),
        (a.id, AgentState.RUNNING, AgentState.READY),
    ]
    assert len(hooked) == 5 and a.state is AgentState.READY  # the Initializing -> Ready edge included


def test_a_call_through_a_hosted_runs_credential_is_that_run_and_marks_it_seen() -> None:
    """The gap for_session__mutmut_13 (group "runtime"): a hosted run's last_seen, its idle time
    on the status page, is refreshed by each call through its credential; a JWT claiming the
    same key id is not that run."""
    reg = AgentRegistry(Recorder())
    p = Principal(id="agent:a", kind="agent", source="key", claims={"key_id": "k1"})
    run = reg.add_hosted("a", p, priority=5, run=1)
    reg.bind_credential("k1", run)
    run.last_seen = 0.0
    assert reg.for_session(p, "anything", "stdio") is run and run.last_seen > 0.0
    jwt = Principal(id="agent:a", kind="agent", source="jwt", claims={"key_id": "k1"})
    assert reg.for_session(jwt, "anything", "stdio") is not run


def test_an_agents_info_is_the_same_object_until_one_of_its_fields_changes() -> None:
    """``Agent.info`` hands out its last AgentInfo while nothing it holds changed (the policy
    input keeps its document with it), and a new one, equal to a fresh one, after any edit."""
    reg = AgentRegistry(Recorder())
    agent = reg.for_session(Principal(id="alice"), "client", "stdio")

    def fresh() -> AgentInfo:
        return AgentInfo(
            id=agent.id, name=agent.name, state=str(agent.state), priority=agent.priority, hosted=agent.hosted
        )

    first = reg.info(agent.id)
    assert first == fresh() and reg.info(agent.id) is first
    reg.transition(agent, AgentState.RUNNING, "task assigned")
    assert reg.info(agent.id) == fresh() and agent.info().state == "Running"
    reg.transition(agent, AgentState.SUSPENDED, "policy violation")
    assert reg.info(agent.id) == fresh() and agent.info().state == "Suspended"
    for field, value in (("priority", 9), ("name", "renamed"), ("hosted", True), ("id", "agt-other")):
        before = agent.info()
        setattr(agent, field, value)
        assert (
            agent.info() == fresh() and agent.info() is not before and getattr(agent.info(), field) == value
        )
