"""ScheduleStep in-process: a real AgentRuntime (scheduler, budgets, breakers) around an inner
endpoint that records what reached it (it stands where the upstream is).

The gateway-level tests (tests/runtime) drive it through `symbi` subprocesses, which mutation
testing cannot attribute (scripts/mutate.py); these attack each branch directly. The one seam:
``anyio.sleep`` in the retry loop is recorded (and not slept) to read the backoff it asked for.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from gateway.chain import build_chain
from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import CallContext, Decision, Principal, ToolInfo, UpstreamInfo
from gateway.errors import AgentSuspended, BudgetExceeded, UpstreamError, UpstreamUnavailable
from gateway.runtime import AgentState
from gateway.runtime.core import AgentRuntime
from gateway.runtime.resources import ResourceLimits
from gateway.steps.schedule import ScheduleStep
from tests.conftest import RecordingSink

S = AgentState
READ_ONLY = {"readOnlyHint": True}


class Endpoint:
    """Fails ``fail`` times with ``error`` (or hangs when ``hang``), then answers."""

    def __init__(
        self, rt: AgentRuntime, *, error: Exception | None = None, fail: int = 0, hang: bool = False
    ) -> None:
        self.rt = rt
        self.error = error
        self.fail = fail
        self.hang = hang
        self.calls = 0
        self.slots: list[tuple[str, int]] = []  # (scheduler key, its calls in flight) per call

    async def __call__(self, call: CallContext) -> Any:
        self.calls += 1
        key = call.principal.agent or f"principal:{call.principal.id}"
        self.slots.append((key, self.rt.scheduler.agent_in_flight(key)))
        if self.hang:
            await anyio.sleep_forever()
        if self.error is not None and self.calls <= self.fail:
            raise self.error
        return "result"


def runtime(**section: Any) -> AgentRuntime:
    return AgentRuntime(Config(runtime=RuntimeSection.model_validate(section)), RecordingSink())


def session(rt: AgentRuntime) -> tuple[Any, Principal]:
    agent = rt.agents.for_session(Principal(id="alice"), "client", "s1")
    rt.begin(agent, "the agent step ran")  # as in the chain: the agent step makes it Running
    return agent, Principal(id="alice", agent=agent.id)


def tool(annotations: dict[str, Any] | None = None, upstream: str = "up") -> ToolInfo:
    return ToolInfo(
        name=f"{upstream}__t",
        original_name="t",
        upstream=upstream,
        definition={},
        annotations=annotations or {},
    )


def run(step: ScheduleStep, ep: Any, call: CallContext) -> Any:
    async def go() -> Any:
        return await build_chain([step], ep)(call)

    return anyio.run(go)


def test_a_suspend_agent_condition_suspends_and_refuses_before_dispatch() -> None:
    rt = runtime()
    agent, p = session(rt)
    ep = Endpoint(rt)
    call = CallContext(
        principal=p,
        kind="tools/call",
        target="up__t",
        tool=tool(),
        decision=Decision(allow=True, conditions={"suspend_agent": "exfiltration"}),
    )
    with pytest.raises(AgentSuspended) as err:
        run(ScheduleStep(rt), ep, call)
    assert ep.calls == 0 and agent.state is S.SUSPENDED
    assert err.value.reasons == ["policy violation: exfiltration"]
    assert agent.reason == "policy violation: exfiltration"


def test_suspend_agent_without_an_agent_does_not_stop_the_call() -> None:
    rt = runtime()
    ep = Endpoint(rt)
    call = CallContext(
        principal=Principal(id="bob"),
        kind="tools/call",
        target="up__t",
        tool=tool(),
        decision=Decision(allow=True, conditions={"suspend_agent": "x"}),
    )
    assert run(ScheduleStep(rt), ep, call) == "result" and ep.calls == 1


def test_the_sandbox_budget_is_the_agents_own_limits_else_the_default() -> None:
    rt = runtime(resources={"memory_mb": 300, "cpu_cores": 1.5, "execution_timeout_s": 40})
    agent, p = session(rt)
    ep = Endpoint(rt)
    call = CallContext(principal=Principal(id="bob"), kind="tools/call", target="up__t", tool=tool())
    run(ScheduleStep(rt), ep, call)
    assert call.sandbox_budget == {"memory_mb": 300, "cpus": 1.5, "timeout_s": 40}
    rt.limits[agent.id] = ResourceLimits(
        memory_mb=64,
        cpu_cores=0.5,
        disk_io_mbps=1,
        network_io_mbps=1,
        execution_timeout_s=9,
        max_concurrent_calls=1,
    )
    call = CallContext(principal=p, kind="tools/call", target="up__t", tool=tool())
    run(ScheduleStep(rt), ep, call)
    assert call.sandbox_budget == {"memory_mb": 64, "cpus": 0.5, "timeout_s": 9}


def test_the_call_holds_a_slot_keyed_by_agent_or_principal_and_releases_it() -> None:
    rt = runtime()
    agent, p = session(rt)
    ep = Endpoint(rt)
    run(ScheduleStep(rt), ep, CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))
    run(ScheduleStep(rt), ep, CallContext(principal=Principal(id="bob"), kind="tools/call", target="up__t"))
    assert ep.slots == [(agent.id, 1), ("principal:bob", 1)]
    assert rt.scheduler.in_flight == 0 and rt.scheduler.agent_in_flight(agent.id) == 0


@pytest.mark.parametrize(
    ("conditions", "agent_priority", "level"),
    [({"priority": 8}, 2, 8), ({}, 2, 2), ({"priority": "7"}, 0, 7)],
)
def test_the_priority_is_the_policys_else_the_agents(
    conditions: dict[str, Any], agent_priority: int, level: int
) -> None:
    rt = runtime()
    agent, p = session(rt)
    agent.priority = agent_priority
    call = CallContext(
        principal=p,
        kind="tools/call",
        target="up__t",
        tool=tool(),
        decision=Decision(allow=True, conditions=conditions),
    )
    run(ScheduleStep(rt), Endpoint(rt), call)
    assert [s.admitted for s in rt.scheduler.stats].index(1) == level


def test_without_an_agent_the_priority_is_the_runtime_default() -> None:
    rt = runtime(default_priority=6)
    run(
        ScheduleStep(rt),
        Endpoint(rt),
        CallContext(principal=Principal(id="bob"), kind="tools/call", target="x"),
    )
    assert [s.admitted for s in rt.scheduler.stats].index(1) == 6


def test_an_agents_calls_beyond_its_concurrency_wait_for_a_slot() -> None:
    rt = runtime(resources={"max_concurrent_calls": 1})
    agent, p = session(rt)
    inside: list[int] = []
    release = anyio.Event()

    async def endpoint(call: CallContext) -> str:
        inside.append(rt.scheduler.agent_in_flight(agent.id))
        await release.wait()
        return "ok"

    async def go() -> None:
        chain = build_chain([ScheduleStep(rt)], endpoint)

        async def one() -> None:
            await chain(CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(one)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            assert len(inside) == 1 and rt.scheduler.queue_depth() == 1  # the second waits
            release.set()
        assert inside == [1, 1]

    anyio.run(go)


def test_a_budget_breach_cancels_the_call_suspends_the_agent_and_names_the_limit() -> None:
    rt = runtime(resources={"execution_timeout_s": 0.05})
    agent, p = session(rt)
    ep = Endpoint(rt, hang=True)
    with pytest.raises(BudgetExceeded) as err:
        run(ScheduleStep(rt), ep, CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))
    assert ep.calls == 1 and agent.state is S.SUSPENDED
    assert err.value.reasons[1] == "resources.execution_timeout_s"
    assert "up__t" in err.value.reasons[0] and agent.reason.startswith("budget breach: ")
    assert rt.scheduler.in_flight == 0  # the slot is given back


def test_a_budget_breach_without_an_agent_is_refused_without_suspending_anyone() -> None:
    rt = runtime(resources={"execution_timeout_s": 0.05})
    other, _ = session(rt)
    with pytest.raises(BudgetExceeded):
        run(
            ScheduleStep(rt),
            Endpoint(rt, hang=True),
            CallContext(principal=Principal(id="bob"), kind="tools/call", target="t"),
        )
    assert other.state is S.RUNNING


def test_the_calls_own_timeout_error_is_not_a_budget_breach() -> None:
    # a TimeoutError raised inside the call (not the budget's deadline) passes on unchanged
    rt = runtime(resources={"execution_timeout_s": 30})
    agent, p = session(rt)
    ep = Endpoint(rt, error=TimeoutError("upstream's own"), fail=1)
    with pytest.raises(TimeoutError) as err:
        run(ScheduleStep(rt), ep, CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))
    assert not isinstance(err.value, BudgetExceeded) and str(err.value) == "upstream's own"
    assert agent.state is S.RUNNING and rt.scheduler.in_flight == 0


def test_an_outer_cancellation_is_not_a_budget_breach_and_gives_the_slot_back() -> None:
    rt = runtime(resources={"execution_timeout_s": 30})
    agent, p = session(rt)
    ep = Endpoint(rt, hang=True)

    async def go() -> None:
        chain = build_chain([ScheduleStep(rt)], ep)
        with anyio.move_on_after(0.05) as scope:  # the caller gives up (client cancel, shutdown)
            await chain(CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))
        assert scope.cancelled_caught

    anyio.run(go)
    assert ep.calls == 1 and agent.state is S.RUNNING and rt.scheduler.in_flight == 0


def _half_open(rt: AgentRuntime) -> None:
    """The upstream's breaker open and its reset passed (test set-up: the monotonic clock's
    ``reset_s`` later): the next call is the probe."""
    rt.breakers.failure("up")
    assert rt.breakers.states() == {"up": "open"}
    rt.breakers.get("up").opened_at = time.monotonic() - 600.0


def _cancelled_probe(rt: AgentRuntime, ep: Endpoint) -> None:
    async def go() -> None:
        with anyio.move_on_after(0.05) as scope:  # the caller of the probe gives up
            await build_chain([ScheduleStep(rt)], ep)(
                CallContext(principal=Principal(id="mallory"), kind="tools/call", target="up__t", tool=tool())
            )
        assert scope.cancelled_caught

    anyio.run(go)


def _budget_spent_probe(rt: AgentRuntime, ep: Endpoint) -> None:
    with pytest.raises(BudgetExceeded):
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="mallory"), kind="tools/call", target="up__t", tool=tool()),
        )


def _failing_probe(rt: AgentRuntime, ep: Endpoint) -> None:
    ep.hang, ep.error, ep.fail = False, RuntimeError("the dispatcher's own"), 1
    with pytest.raises(RuntimeError):
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="mallory"), kind="tools/call", target="up__t", tool=tool()),
        )


@pytest.mark.parametrize("probe", [_cancelled_probe, _budget_spent_probe, _failing_probe])
def test_a_probe_that_ends_without_a_verdict_does_not_lock_the_upstream_out(probe: Any) -> None:
    """Attack: a caller makes the half-open breaker's one probe and cancels it (or it runs out
    of its budget, or fails in the gateway). Before the fix the probe stayed "out" for good and
    every later call to the upstream was refused (``UpstreamUnavailable``) until a restart."""
    rt = runtime(breaker={"failures": 1, "reset_s": 600}, resources={"execution_timeout_s": 0.05})
    _half_open(rt)
    ep = Endpoint(rt, hang=True)
    probe(rt, ep)
    assert rt.breakers.states() == {"up": "half-open"} and ep.calls == 1
    ep.hang, ep.error = False, None
    call = CallContext(principal=Principal(id="bob"), kind="tools/call", target="up__t", tool=tool())
    assert run(ScheduleStep(rt), ep, call) == "result"  # the next call is the probe, and closes it
    assert rt.breakers.states() == {"up": "closed"} and ep.calls == 2


def test_a_probe_abandoned_by_one_caller_still_refuses_the_others_while_the_next_is_out() -> None:
    rt = runtime(breaker={"failures": 1, "reset_s": 600}, resources={"execution_timeout_s": 30})
    _half_open(rt)
    ep = Endpoint(rt, hang=True)
    _cancelled_probe(rt, ep)

    async def go() -> None:
        chain = build_chain([ScheduleStep(rt)], ep)

        async def probe() -> None:
            await chain(
                CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool())
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            while ep.calls < 2:  # the new probe is at the upstream
                await anyio.sleep(0.01)
            with pytest.raises(UpstreamUnavailable):  # one probe at a time, still
                await chain(
                    CallContext(principal=Principal(id="c"), kind="tools/call", target="up__t", tool=tool())
                )
            tg.cancel_scope.cancel()

    anyio.run(go)
    assert ep.calls == 2


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    asked: list[float] = []
    real = anyio.sleep

    async def fake(delay: float) -> None:
        asked.append(delay)
        await real(0)

    monkeypatch.setattr("gateway.steps.schedule.anyio.sleep", fake)
    return asked


def test_retries_back_off_exponentially_up_to_the_cap(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 5, "backoff_s": 0.5, "backoff_max_s": 1.5}, breaker={"failures": 10})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=4)
    assert (
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool(READ_ONLY)),
        )
        == "result"
    )
    assert ep.calls == 5 and sleeps == [0.5, 1.0, 1.5, 1.5]
    assert rt.breakers.get("up").failures == 0  # the success closed the count


def test_the_last_failure_is_raised_and_counted_by_the_breaker(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 2, "backoff_s": 0.1}, breaker={"failures": 10})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    with pytest.raises(UpstreamUnavailable):
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool(READ_ONLY)),
        )
    assert ep.calls == 2 and sleeps == [0.1] and rt.breakers.get("up").failures == 2


def test_an_open_breaker_stops_the_retries_unsent(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 5, "backoff_s": 0.1}, breaker={"failures": 2, "reset_s": 600})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    with pytest.raises(UpstreamUnavailable):
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool(READ_ONLY)),
        )
    assert ep.calls == 2 and rt.breakers.states() == {"up": "open"}


def test_an_upstreams_own_error_is_passed_on_at_once_and_keeps_the_breaker_closed(
    sleeps: list[float],
) -> None:
    rt = runtime(retry={"attempts": 3}, breaker={"failures": 1})
    rt.breakers.get("up").failures = 0
    ep = Endpoint(rt, error=UpstreamError("its own error", mcp_error=object()), fail=99)
    with pytest.raises(UpstreamError) as err:
        run(
            ScheduleStep(rt),
            ep,
            CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool(READ_ONLY)),
        )
    assert err.value.mcp_error is not None
    assert ep.calls == 1 and sleeps == [] and rt.breakers.states() == {"up": "closed"}


def test_a_call_without_a_tool_uses_the_upstreams_breaker_and_is_not_retried(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 3}, breaker={"failures": 1, "reset_s": 600})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    call = CallContext(
        principal=Principal(id="b"),
        kind="resources/read",
        target="file:///x",
        upstream=UpstreamInfo(name="res", transport="stdio"),
    )
    with pytest.raises(UpstreamUnavailable):
        run(ScheduleStep(rt), ep, call)
    assert ep.calls == 1 and rt.breakers.states() == {"res": "open"}
    with pytest.raises(UpstreamUnavailable):  # open: refused without reaching the upstream
        run(ScheduleStep(rt), ep, call)
    assert ep.calls == 1


def test_built_in_providers_and_calls_without_an_upstream_have_no_breaker(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 3}, breaker={"failures": 1})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    step = ScheduleStep(rt, builtins=frozenset({"sandbox"}))
    for call in (
        CallContext(
            principal=Principal(id="b"),
            kind="tools/call",
            target="sandbox__run",
            tool=tool(READ_ONLY, "sandbox"),
        ),
        CallContext(principal=Principal(id="b"), kind="prompts/get", target="p"),
    ):
        with pytest.raises(UpstreamUnavailable):
            run(step, ep, call)
    assert ep.calls == 2 and sleeps == [] and rt.breakers.states() == {}


@pytest.mark.parametrize("annotations", [{}, {"destructiveHint": True}, {"readOnlyHint": False}])
def test_a_tool_that_does_not_say_a_repeat_is_harmless_is_tried_once(
    sleeps: list[float], annotations: dict[str, Any]
) -> None:
    rt = runtime(retry={"attempts": 3, "backoff_s": 0.1}, breaker={"failures": 10})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    call = CallContext(principal=Principal(id="b"), kind="tools/call", target="up__t", tool=tool(annotations))
    with pytest.raises(UpstreamUnavailable):
        run(ScheduleStep(rt), ep, call)
    assert ep.calls == 1 and sleeps == [] and rt.breakers.get("up").failures == 1


def test_a_call_without_a_tool_is_tried_once(sleeps: list[float]) -> None:
    rt = runtime(retry={"attempts": 3, "backoff_s": 0.1}, breaker={"failures": 10})
    ep = Endpoint(rt, error=UpstreamUnavailable("down"), fail=99)
    call = CallContext(
        principal=Principal(id="b"),
        kind="resources/read",
        target="file:///x",
        upstream=UpstreamInfo(name="res", transport="stdio"),
    )
    with pytest.raises(UpstreamUnavailable):
        run(ScheduleStep(rt), ep, call)
    assert ep.calls == 1 and sleeps == []


def test_budgets_share_one_timer_and_each_call_keeps_its_own_deadline() -> None:
    """A later call with a shorter budget is still cut first; a call that ends in time is never
    cancelled afterwards (its task goes on past the deadline it had)."""
    import asyncio

    from gateway.steps.schedule import Budgets

    budgets = Budgets()
    seen: list[str] = []

    async def call(name: str, seconds: float, work: float) -> None:
        budget = budgets.start(seconds)
        assert budget is not None
        try:
            await anyio.sleep(work)
        except asyncio.CancelledError as e:
            budgets.stop(budget)
            assert budget.breached(e)
            seen.append(f"{name} breached")
            return
        budgets.stop(budget)
        assert not budget.breached(None)
        seen.append(f"{name} done")
        await anyio.sleep(0.4)  # past the deadline it had: nothing cancels the task now
        seen.append(f"{name} after")

    async def go() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "long", 0.3, 10)
            await anyio.sleep(0.02)
            tg.start_soon(call, "short", 0.05, 10)
            tg.start_soon(call, "quick", 0.2, 0.01)

    anyio.run(go)
    assert seen == ["quick done", "short breached", "long breached", "quick after"]


def test_a_step_used_again_on_a_new_loop_still_enforces_the_budget() -> None:
    rt = runtime(resources={"execution_timeout_s": 0.05})
    agent, p = session(rt)
    step = ScheduleStep(rt)
    call = CallContext(principal=p, kind="tools/call", target="up__t", tool=tool())
    assert run(step, Endpoint(rt), call) == "result"  # binds the budgets to that loop
    with pytest.raises(BudgetExceeded):  # a new loop once that one is closed
        run(step, Endpoint(rt, hang=True), call)
    assert agent.state is S.SUSPENDED


def test_a_call_on_another_live_loop_gets_asyncios_timer() -> None:
    import asyncio

    rt = runtime(resources={"execution_timeout_s": 0.05})
    agent, p = session(rt)
    step = ScheduleStep(rt)
    other = asyncio.new_event_loop()
    try:

        async def bind() -> None:
            budget = step.budgets.start(60)
            assert budget is not None
            step.budgets.stop(budget)

        other.run_until_complete(bind())  # the budgets now belong to a loop that is still open

        async def second() -> None:  # another loop's budgets are not this one's, nor taken over
            assert step.budgets.start(60) is None

        asyncio.run(second())
        call = CallContext(principal=p, kind="tools/call", target="up__t", tool=tool())
        assert run(step, Endpoint(rt), call) == "result"  # a call in time is answered there too
        with pytest.raises(BudgetExceeded):
            run(step, Endpoint(rt, hang=True), call)
        rt.resume(agent, "the breach was the test's")
        ep = Endpoint(rt, error=TimeoutError("its own"), fail=1)
        with pytest.raises(TimeoutError) as err:
            run(step, ep, call)
        assert not isinstance(err.value, BudgetExceeded)
    finally:
        other.close()


def test_a_budget_ends_with_its_call() -> None:
    """A call that answers (or fails) before its deadline leaves nothing behind that cancels the
    task running it later (session 10's mutation run: the budget kept after the call survived)."""
    import asyncio

    rt = runtime(resources={"execution_timeout_s": 0.05})
    _, p = session(rt)
    step = ScheduleStep(rt)
    call = CallContext(principal=p, kind="tools/call", target="up__t", tool=tool())

    async def go(ep: Endpoint) -> str:
        try:
            await build_chain([step], ep)(call)
        except TimeoutError:
            pass
        try:
            await anyio.sleep(0.2)  # past the deadline the call had
        except asyncio.CancelledError:
            return "cancelled later"
        return "left alone"

    assert anyio.run(go, Endpoint(rt)) == "left alone"
    assert anyio.run(go, Endpoint(rt, error=TimeoutError("its own"), fail=1)) == "left alone"


def test_a_call_failing_its_own_way_after_its_deadline_is_not_a_breach() -> None:
    """As ``asyncio.timeout``: only a ``CancelledError`` that is the deadline's is the breach; an
    error the call raises while being cancelled passes on (session 10's mutation run)."""
    import asyncio

    from gateway.steps.schedule import Budgets

    budgets = Budgets()
    out: dict[str, Any] = {}

    async def call() -> None:
        budget = budgets.start(0.05)
        assert budget is not None
        try:
            try:
                await anyio.sleep(10)
            except asyncio.CancelledError:
                raise RuntimeError("its own clean-up failed") from None
        except BaseException as e:  # noqa: BLE001 - what the step sees
            budgets.stop(budget)
            out["breached"], out["error"] = budget.breached(e), e

    anyio.run(call)
    assert out["breached"] is False and isinstance(out["error"], RuntimeError)


def test_a_principals_calls_share_its_cap_across_its_agents() -> None:
    """Two sessions (agents) of alice, each under its own limit: at
    runtime.max_in_flight_per_principal = 1 the second waits; bob's call does not."""
    rt = runtime(max_in_flight_per_principal=1)
    _, p1 = session(rt)
    second = rt.agents.for_session(Principal(id="alice"), "client", "s2")
    rt.begin(second, "the agent step ran")
    p2 = Principal(id="alice", agent=second.id)
    inside: list[str] = []
    release = anyio.Event()

    async def endpoint(call: CallContext) -> str:
        inside.append(call.principal.id)
        if call.principal.id == "alice":
            await release.wait()
        return "ok"

    async def go() -> None:
        chain = build_chain([ScheduleStep(rt)], endpoint)

        async def one(p: Principal) -> None:
            await chain(CallContext(principal=p, kind="tools/call", target="up__t", tool=tool()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, p1)
            tg.start_soon(one, p2)
            for _ in range(50):
                await anyio.lowlevel.checkpoint()
            assert inside == ["alice"] and rt.scheduler.principal_in_flight("stdio:alice") == 1
            await one(Principal(id="bob"))  # another principal: runs at once
            assert inside == ["alice", "bob"] and rt.scheduler.queue_depth() == 1
            release.set()
        assert inside == ["alice", "bob", "alice"]
        assert rt.scheduler.in_flight == 0 and rt.scheduler.principal_in_flight("stdio:alice") == 0

    anyio.run(go)
