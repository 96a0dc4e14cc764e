"""Decisions taken together: the real repo policy on the embedded engine, asked at once.

The engine is a real ``EmbeddedEngine`` whose ``decide`` also notes, for each input, whether it
ran inside a caller's task (decided inline) or in the loop's own callback (taken together)."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

from mcp.types import CallToolResult

from gateway.chain import build_chain
from gateway.context import CallContext, Decision
from gateway.errors import PolicyDenied
from gateway.policy.cases import Case
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles, discover_files
from gateway.policy.together import Together
from gateway.steps.policy import PolicyStep
from tests.steps.test_policy import Recorder, call_of


class Noting(EmbeddedEngine):
    """The repo policy, noting each decision's target and whether a caller's task made it."""

    def __init__(self) -> None:
        super().__init__(discover_files())
        assert self.load()
        self.made: list[tuple[str, bool]] = []  # (target, inside a task)
        self.fail_on: str | None = None

    def decide(self, input: Mapping[str, Any]) -> Decision:
        self.made.append((str(input.get("target")), asyncio.current_task() is not None))
        if input.get("target") == self.fail_on:
            raise RuntimeError("this input's own failure")
        return super().decide(input)


def test_decisions_asked_in_one_turn_are_taken_together_each_its_own(cases: list[Case]) -> None:
    engine = Noting()
    together = Together()
    docs = [copy.deepcopy(c.input) for c in cases[:24]]
    alone = [EmbeddedEngine.decide(engine, d) for d in docs]  # each on its own, for comparison
    engine.made.clear()

    async def main() -> list[Decision]:
        return await asyncio.gather(*(together.run(functools.partial(engine.decide, d)) for d in docs))

    got = asyncio.run(main())
    assert [(g.allow, g.reasons, g.conditions) for g in got] == [
        (a.allow, a.reasons, a.conditions) for a in alone
    ]
    assert {a.allow for a in alone} == {True, False}  # both kinds among them
    # all taken in the loop's callback, after every caller asked, in the order they asked
    assert engine.made == [(str(d.get("target")), False) for d in docs]


def test_a_caller_gone_before_its_turn_is_skipped_and_a_failure_is_its_callers_own(
    cases: list[Case],
) -> None:
    engine = Noting()
    together = Together()
    first, gone, failing, last = (copy.deepcopy(c.input) for c in cases[:4])
    failing["target"] = engine.fail_on = "fails__here"

    async def main() -> tuple[Any, ...]:
        tasks = [
            asyncio.ensure_future(together.run(functools.partial(engine.decide, d)))
            for d in (first, gone, failing, last)
        ]
        await asyncio.sleep(0)  # all four asked: their turn comes at the end of this one
        tasks[1].cancel()
        return tuple(await asyncio.gather(*tasks, return_exceptions=True))

    a, b, c, d = asyncio.run(main())
    assert isinstance(a, Decision) and isinstance(d, Decision)
    assert isinstance(b, asyncio.CancelledError)
    assert isinstance(c, RuntimeError)
    assert [t for t, _ in engine.made] == [str(first.get("target")), "fails__here", str(last.get("target"))]


def test_a_new_loop_is_not_held_up_by_what_a_closed_one_asked(cases: list[Case]) -> None:
    engine = Noting()
    together = Together()
    doc = copy.deepcopy(cases[0].input)
    old = asyncio.new_event_loop()
    try:
        asked = old.create_task(together.run(lambda: engine.decide(doc)))
        old.call_soon(old.stop)
        old.run_forever()  # one turn: asked, and the loop stopped before the decisions' turn
        assert not asked.done()
        asked.cancel()
    finally:
        old.close()
    got = asyncio.run(asyncio.wait_for(together.run(lambda: engine.decide(doc)), 5))
    assert isinstance(got, Decision)


class Upstream(Recorder):
    """The endpoint, answering on the loop's next turn: the calls before stay in flight."""

    async def __call__(self, call: CallContext) -> CallToolResult:
        await asyncio.sleep(0)
        return await super().__call__(call)


def test_the_policy_step_decides_a_lone_call_inline_and_concurrent_ones_together() -> None:
    engine = Noting()
    step = PolicyStep(engine)
    chain = build_chain([step], Upstream())

    async def main() -> None:
        await chain(call_of("time__get_current_time", {"timezone": "UTC"}, verification="pinned"))
        assert engine.made == [("time__get_current_time", True)]  # alone: in its own task
        engine.made.clear()
        calls = [
            call_of("time__get_current_time", {"timezone": f"UTC+{i}"}, verification="pinned")
            for i in range(6)
        ]
        calls.append(call_of("fs__read_text_file", {"path": "/srv/symbi/../../etc/shadow"}))
        results = await asyncio.gather(*(chain(c) for c in calls), return_exceptions=True)
        assert [type(r) for r in results[:6]] == [type(results[0])] * 6 and not isinstance(
            results[0], Exception
        )
        assert isinstance(results[6], PolicyDenied)  # each call still gets its own decision
        # the first to arrive is alone at that moment; the rest arrive while it is in flight
        assert engine.made[0] == ("time__get_current_time", True)
        assert [inside for _, inside in engine.made[1:]] == [False] * 6

    asyncio.run(main())


def test_an_hourly_cap_holds_for_calls_decided_together(policy_copy: PolicyFiles) -> None:
    """Attack: calls sent at once, all decided in one turn, each read the hourly count before
    any of them was admitted and all passed a cap of 3. Each decision must read the calls
    admitted before it: exactly 3 of 12 pass, the rest are refused by the policy."""
    assert policy_copy.data is not None
    doc = json.loads(policy_copy.data.read_text())
    doc["symbi_data"]["principals"]["stdio"]["local"]["max_calls_per_hour"] = 3
    policy_copy.data.write_text(json.dumps(doc))
    engine = EmbeddedEngine(policy_copy)
    assert engine.load()
    step = PolicyStep(engine)
    chain = build_chain([step], Upstream())

    async def main() -> list[Any]:
        calls = [
            call_of("time__get_current_time", {"timezone": f"UTC+{i}"}, verification="pinned")
            for i in range(12)
        ]
        return await asyncio.gather(*(chain(c) for c in calls), return_exceptions=True)

    results = asyncio.run(main())
    assert sum(1 for r in results if isinstance(r, CallToolResult)) == 3
    assert sum(1 for r in results if isinstance(r, PolicyDenied)) == 9
    assert step.counters.principal_counts("stdio:local")[1] == 3  # only the admitted are counted
