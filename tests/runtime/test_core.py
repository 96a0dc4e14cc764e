"""AgentRuntime's operator actions, accounting and recent errors in-process, with the events
they write (what the audit log and the status page show).

Found by mutation testing (group "runtime", scripts/mutate.py): the lifecycle tests check the
states; these check what each action answers, the reasons the transitions carry, and that
accounting and denial windows are per agent.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import pytest

from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import Principal
from gateway.errors import AgentSuspended, AuditError, InvalidTransition, PolicyDenied, RateLimited
from gateway.runtime import AgentState
from gateway.runtime.core import AgentRuntime

S = AgentState


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None, str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details), principal, agent))

    def reasons(self, agent: str) -> list[tuple[str, str]]:
        return [(d["to"], d["reason"]) for t, d, _, a in self.events if t == "agent.state" and a == agent]


class BreakingRecorder(Recorder):
    """The audit log as ``on_failure = "deny"`` has it once broken: every record raises (as
    does ``recordable``, the log's ``ensure_writable`` for hosted runs). The event types in
    ``refuse`` raise also while ``recordable`` passes; ``refused`` lists every record refused."""

    broken = False

    def __init__(self, refuse: Collection[str] = ()) -> None:
        super().__init__()
        self.refuse = set(refuse)
        self.refused: list[str] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        if self.broken or event_type in self.refuse:
            self.refused.append(event_type)
            raise AuditError("audit log cannot be written: full")
        super().emit(event_type, details, principal=principal, agent=agent)

    def recordable(self) -> None:
        if self.broken:
            raise AuditError("audit log cannot be written: full")


def runtime(**section: Any) -> tuple[Recorder, AgentRuntime]:
    rec = Recorder()
    return rec, AgentRuntime(Config(runtime=RuntimeSection(**section)), rec)


def state(agent: Any) -> AgentState:
    return agent.state  # type: ignore[no-any-return]


def agent_of(rt: AgentRuntime, who: str = "alice", session: str = "s1") -> Any:
    return rt.agents.for_session(Principal(id=who), "client", session)


def test_accounting_adds_up_over_calls_and_the_end_of_a_task_is_recorded() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    seen = a.last_seen
    for elapsed, size in ((0.5, 100), (0.25, None), (1.0, 7)):
        rt.begin(a, "t")
        rt.end(a, elapsed, size)
    u = rt.usage_of(a)
    assert (u.calls, u.busy_s, u.longest_call_s, u.bytes_out) == (3, 1.75, 1.0, 107)
    assert a.last_seen >= seen and isinstance(a.last_seen, float)
    assert rec.reasons(a.id)[-1] == ("Ready", "task complete")


def test_an_agent_terminated_while_running_ends_with_the_operators_reason() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    hooked: list[Any] = []
    rt.on_terminate.append(hooked.append)
    rt.begin(a, "t")
    assert rt.terminate(a, "operator: leaked a key") == "terminating (after its calls in flight)"
    assert hooked == [a] and state(a) is S.RUNNING
    rt.end(a, 0.1)
    assert state(a) is S.TERMINATED and rec.reasons(a.id)[-1] == ("Terminated", "operator: leaked a key")
    assert rt.terminate(a, "again") == "already terminated"


def test_terminate_answers_and_reasons() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    assert rt.terminate(a, "operator: done") == "terminated"
    assert rec.reasons(a.id)[-1] == ("Terminated", "operator: done")
    b = agent_of(rt, "bob")
    b.state = S.INITIALIZING  # test set-up only
    with pytest.raises(InvalidTransition):
        rt.terminate(b, "too early")


def test_suspend_answers_and_the_pending_event() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    assert rt.suspend(a, "operator: look at it") == "pending"
    (kind, details, principal, agent) = rec.events[-2]  # then its principal's (gateway.runtime.holds)
    assert (kind, details, principal, agent) == (
        "agent.suspend_pending",
        {"agent": a.id, "reason": "operator: look at it"},
        "alice",
        a.id,
    )
    with pytest.raises(AgentSuspended):
        rt.begin(a, "t")
    assert rt.suspend(a, "again") == "already suspended"
    b = agent_of(rt, "bob")
    rt.begin(b, "t")
    assert rt.suspend(b, "operator") == "suspended" and state(b) is S.SUSPENDED
    rt.terminate(b, "gone")
    with pytest.raises(InvalidTransition):
        rt.suspend(b, "too late")


def test_resume_clears_a_pending_suspension_and_refuses_an_agent_not_suspended() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    with pytest.raises(InvalidTransition):
        rt.resume(a, "nothing to resume")
    rt.suspend(a, "operator")
    assert rt.resume(a, "operator: false alarm") == "pending suspension cleared"
    rt.begin(a, "t")  # the next task runs
    assert state(a) is S.RUNNING
    rt.end(a, 0.1)
    rt.begin(a, "t")
    rt.suspend(a, "operator")
    assert rt.resume(a, "operator: checked") == "resumed"
    assert rec.reasons(a.id)[-1] == ("Running", "policy cleared: operator: checked")
    # still a call in flight: Running until it ends
    assert state(a) is S.RUNNING
    rt.end(a, 0.1)
    assert state(a) is S.READY
    rt.begin(a, "t")
    rt.suspend(a, "operator")
    rt.end(a)
    assert rt.resume(a, "x") == "resumed" and state(a) is S.READY  # nothing in flight: Ready at once
    assert rec.reasons(a.id)[-1] == ("Ready", "task complete (nothing in flight)")


def test_a_resume_forgets_the_denials_before_it() -> None:
    rec, rt = runtime(suspend_after_denials=2, denial_window_s=600)
    a = agent_of(rt)
    rt.begin(a, "t")
    rt.note_error(a, PolicyDenied("no"), "t")
    rt.suspend(a, "operator")
    rt.resume(a, "operator")
    rt.note_error(a, PolicyDenied("no"), "t")  # one denial since the resume
    assert state(a) is S.RUNNING


def test_denials_are_counted_per_principal_and_the_suspension_names_the_setting() -> None:
    rec, rt = runtime(suspend_after_denials=2, denial_window_s=600)
    a, b = agent_of(rt), agent_of(rt, "bob")
    rt.begin(a, "t")
    rt.begin(b, "t")
    rt.note_error(a, PolicyDenied("no"), "t")
    rt.note_error(b, PolicyDenied("no"), "t")
    assert state(a) is S.RUNNING and state(b) is S.RUNNING  # one each: nobody at two
    rt.note_error(a, PolicyDenied("no"), "t")
    assert state(a) is S.SUSPENDED and state(b) is S.RUNNING
    assert "runtime.suspend_after_denials" in rec.reasons(a.id)[-1][1]


def test_a_principals_new_session_does_not_start_a_new_count_of_denials() -> None:
    """Attack: reconnect before the session's agent reaches the threshold. The window is the
    principal's: its second session is suspended on its first denial, and while the window is
    full so is every next session that is denied; an operator's resume starts a fresh count.
    The sweep forgets a window with no denial left in it."""
    rec, rt = runtime(suspend_after_denials=2, denial_window_s=600)
    first, second, third = (agent_of(rt, session=s) for s in ("s1", "s2", "s3"))
    rt.begin(first, "t")
    rt.note_error(first, PolicyDenied("no"), "t")
    rt.begin(second, "t")
    rt.note_error(second, PolicyDenied("no"), "t")
    assert state(first) is S.RUNNING and state(second) is S.SUSPENDED
    with pytest.raises(AgentSuspended):  # the suspension is the principal's (gateway.runtime.holds)
        rt.begin(third, "t")
    assert state(third) is S.SUSPENDED
    rt.resume(third, "operator")
    assert state(second) is S.RUNNING and state(third) is S.READY  # the principal's, cleared
    rt.begin(third, "t")
    rt.note_error(third, PolicyDenied("no"), "t")
    assert state(third) is S.RUNNING  # one denial since the resume
    rt.sweep(now=time.monotonic() + 599)
    rt.note_error(third, PolicyDenied("no"), "t")
    assert state(third) is S.SUSPENDED  # the window still held the one before
    rt.sweep(now=time.monotonic() + 601)
    assert rt._denials == {}  # nothing kept for a principal with no recent denial


def test_a_rate_limit_is_no_denial_of_the_agent_that_met_it() -> None:
    # Attack: one agent spent its principal's shared rate limit; a sibling agent of the same
    # principal met it ten times and was suspended for "policy violations" it never made.
    rec, rt = runtime(suspend_after_denials=2, denial_window_s=600)
    a = agent_of(rt)
    rt.begin(a, "t")
    for _ in range(5):
        rt.note_error(a, RateLimited("rate limit of 60 per minute reached"), "t")
    assert state(a) is S.RUNNING
    assert [e["code"] for e in rt.recent_errors] == ["rate_limited"] * 5  # still reported


def test_recent_errors_name_the_code_agent_and_time() -> None:
    rec, rt = runtime()
    a = agent_of(rt)
    before = time.time()
    rt.note_error(a, RuntimeError("boom"), "up__t")
    rt.note_error(None, PolicyDenied("no"), "up__u")
    first, second = rt.recent_errors
    assert (first["code"], first["agent"], first["type"], first["target"]) == (
        "internal_error",
        a.id,
        "RuntimeError",
        "up__t",
    )
    assert (second["code"], second["agent"]) == ("policy_denied", None)
    assert before <= first["time"] <= time.time()


def test_closing_a_session_ends_its_agents_with_the_reason() -> None:
    rec, rt = runtime()
    starting = rt.agents.for_session(Principal(id="carol"), "client", "s1")  # first in the session
    starting.state = S.INITIALIZING  # test set-up only: not yet Ready, skipped (the others still end)
    running, ready = agent_of(rt, "alice", "s1"), rt.agents.for_session(Principal(id="alice"), "other", "s1")
    rt.begin(running, "t")
    assert rt.close_session("s1", "session closed by the client") == 2
    assert state(ready) is S.TERMINATED and rec.reasons(ready.id)[-1][1] == "session closed by the client"
    rt.end(running, 0.1)
    assert state(running) is S.TERMINATED and rec.reasons(running.id)[-1][1] == "session closed by the client"
    assert state(starting) is S.INITIALIZING


def test_a_refused_task_carries_the_agents_reason() -> None:
    from gateway.errors import AgentTerminated

    rec, rt = runtime()
    a = agent_of(rt)
    rt.begin(a, "t")
    rt.suspend(a, "operator: why")
    with pytest.raises(AgentSuspended) as err:
        rt.begin(a, "t")
    assert err.value.reasons[0] == "operator: why"
    assert "resume --principal" in err.value.reasons[-1]  # how its principal's hold is cleared
    a.reason = ""  # test set-up: a state without a recorded reason
    with pytest.raises(AgentSuspended) as err:
        rt.begin(a, "t")
    assert err.value.reasons[0] == "suspended"
    b = agent_of(rt, "bob")
    rt.terminate(b, "operator: gone")
    with pytest.raises(AgentTerminated) as err2:
        rt.begin(b, "t")
    assert err2.value.reasons == ["operator: gone"]
    b.reason = ""
    with pytest.raises(AgentTerminated) as err2:
        rt.begin(b, "t")
    assert err2.value.reasons == ["terminated"]
    c = agent_of(rt, "carol")
    rt.suspend(c, "operator: later")  # pending: applied at the next task, with its reason
    with pytest.raises(AgentSuspended) as err:
        rt.begin(c, "t")
    assert err.value.reasons[0] == "operator: later" and rec.reasons(c.id)[-1] == (
        "Suspended",
        "operator: later",
    )
    assert c.calls == 1  # the refused task still counts as one asked for


def test_calls_are_counted_and_a_removed_agent_leaves_nothing_behind() -> None:
    from gateway.runtime.resources import ResourceLimits

    rec, rt = runtime(suspend_after_denials=5)
    a = agent_of(rt)
    for _ in range(3):
        rt.begin(a, "t")
    assert a.calls == 3
    rt.note_error(a, PolicyDenied("no"), "t")
    rt.limits[a.id] = ResourceLimits(
        memory_mb=64,
        cpu_cores=0.5,
        disk_io_mbps=1,
        network_io_mbps=1,
        execution_timeout_s=1,
        max_concurrent_calls=1,
    )
    rt.pool.allocate(a.id, rt.limits[a.id], 1)
    rt.terminate(a, "operator")  # Running: ends when its calls do
    for _ in range(3):
        rt.end(a, 0.1)
    assert state(a) is S.TERMINATED and a.id in rt.usage
    assert rt.sweep() == 1  # removed: everything kept for it goes
    assert a.id not in rt.usage and a.id not in rt.limits and a.id not in rt._denials
    assert a.id not in rt._terminating and all(not s["agents"] for s in rt.pool.as_json())


def test_the_per_principal_caps_of_the_config_are_the_schedulers() -> None:
    _, rt = runtime(max_in_flight_per_principal=3, queue_limit_per_principal=5)
    assert (rt.scheduler.max_in_flight_per_principal, rt.scheduler.queue_limit_per_principal) == (3, 5)
