"""The priority scheduler on its own (real asyncio, no fakes): order, aging, limits, preemption."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.errors import Preempted, SchedulerBusy
from gateway.runtime.scheduler import Scheduler


async def _job(
    s: Scheduler, agent: str, prio: int, order: list[str], hold: float = 0.0, limit: int = 8
) -> None:
    async with s.slot(agent, prio, limit):
        order.append(agent)
        await asyncio.sleep(hold)


def test_at_concurrency_one_high_priority_overtakes_queued_low_priority() -> None:
    async def main() -> list[str]:
        s = Scheduler(max_in_flight=1, aging_s=1000)
        order: list[str] = []
        first = asyncio.create_task(_job(s, "busy", 0, order, hold=0.05))
        await asyncio.sleep(0)
        lows = [asyncio.create_task(_job(s, f"low{i}", 1, order)) for i in range(3)]
        await asyncio.sleep(0)
        high = asyncio.create_task(_job(s, "high", 9, order))
        await asyncio.gather(first, high, *lows)
        return order

    assert asyncio.run(main()) == ["busy", "high", "low0", "low1", "low2"]


def test_low_priority_completes_under_sustained_high_priority_load() -> None:
    async def main() -> int:
        s = Scheduler(max_in_flight=1, aging_s=0.02)  # 20 ms of waiting is worth one level
        order: list[str] = []
        stop = asyncio.Event()

        async def flood() -> None:  # always at least one high-priority call queued
            while not stop.is_set():
                await _job(s, f"high{len(order)}", 9, order, hold=0.005)

        floods = [asyncio.create_task(flood()) for _ in range(3)]
        await asyncio.sleep(0.01)
        await asyncio.wait_for(_job(s, "low", 0, order), timeout=10)
        highs_before = sum(1 for x in order if x.startswith("high"))
        stop.set()
        await asyncio.gather(*floods)
        return highs_before

    highs_before = asyncio.run(main())
    assert highs_before > 3  # it did wait behind high-priority work, and still ran


def test_per_agent_limit_lets_other_agents_through() -> None:
    async def main() -> list[str]:
        s = Scheduler(max_in_flight=4)
        order: list[str] = []
        a1 = asyncio.create_task(_job(s, "a", 5, order, hold=0.05, limit=1))
        await asyncio.sleep(0)
        a2 = asyncio.create_task(_job(s, "a", 9, order, limit=1))  # waits: agent a is at its limit
        await asyncio.sleep(0)
        b = asyncio.create_task(_job(s, "b", 0, order, limit=1))
        await asyncio.sleep(0.01)
        assert s.agent_in_flight("a") == 1 and s.queue_depth() == 1
        await asyncio.gather(a1, a2, b)
        return order

    assert asyncio.run(main()) == ["a", "b", "a"]


def test_full_queue_preempts_lower_priority_and_refuses_equal() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=1, queue_limit=2, aging_s=1000)
        order: list[str] = []
        hold = asyncio.create_task(_job(s, "busy", 5, order, hold=0.05))
        await asyncio.sleep(0)
        low = asyncio.create_task(_job(s, "low", 1, order))
        mid = asyncio.create_task(_job(s, "mid", 5, order))
        await asyncio.sleep(0)
        high = asyncio.create_task(_job(s, "high", 9, order))
        await asyncio.sleep(0)
        with pytest.raises(Preempted):
            await low
        with pytest.raises(SchedulerBusy):
            await _job(s, "late", 1, order)  # everything queued stands higher: refused, not hung
        await asyncio.gather(hold, mid, high)
        assert order == ["busy", "high", "mid"]
        assert s.stats[1].preempted == 1 and s.in_flight == 0 and s.queue_depth() == 0

    asyncio.run(main())


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=1)
        order: list[str] = []
        hold = asyncio.create_task(_job(s, "busy", 5, order, hold=0.03))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(_job(s, "w", 5, order))
        await asyncio.sleep(0)
        assert s.queue_depth() == 1
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert s.queue_depth() == 0
        await hold
        assert s.in_flight == 0 and order == ["busy"]

    asyncio.run(main())


# -- found by mutation testing (group "runtime") ----------------------------------------


def test_the_stats_count_admissions_waits_and_decisions_per_level() -> None:
    """The /metrics figures; the clock is the scheduler's own seam (waiting is not slept)."""
    now = [100.0]
    s = Scheduler(max_in_flight=1, queue_limit=10, aging_s=1000, clock=lambda: now[0])

    async def waits(agent: str, holder: str, seconds: float) -> float:
        task = asyncio.create_task(s.acquire(agent, 3, 1))
        await asyncio.sleep(0)
        assert s.queue_depth(3) == 1 and s.queue_depth() == 1
        now[0] += seconds
        s.release(holder)
        return await task

    async def main() -> list[float]:
        assert await s.acquire("a", 3, 1) == 0.0  # admitted at once: no wait
        s.release("a")
        assert await s.acquire("c", 3, 1) == 0.0  # twice
        return [await waits("b", "c", 2.5), await waits("d", "b", 1.0)]

    assert asyncio.run(main()) == [2.5, 1.0]
    st = s.stats[3]
    assert (st.admitted, st.wait_s_total, st.wait_s_max) == (4, 3.5, 2.5)
    assert s.decisions == 4 and s.decision_s_total >= 0 and s.in_flight == 1


@pytest.mark.parametrize(("asked", "level"), [(-3, 0), (0, 0), (9, 9), (42, 9)])
def test_a_priority_out_of_range_is_clamped_to_the_levels(asked: int, level: int) -> None:
    s = Scheduler()
    asyncio.run(s.acquire("a", asked, 1))
    assert [x.admitted for x in s.stats].index(1) == level and sum(x.admitted for x in s.stats) == 1


def test_each_release_gives_back_one_of_the_agents_slots() -> None:
    s = Scheduler(max_in_flight=8)

    async def main() -> None:
        await s.acquire("a", 1, 3)
        await s.acquire("a", 1, 3)
        await s.acquire("b", 1, 3)

    asyncio.run(main())
    assert (s.agent_in_flight("a"), s.agent_in_flight("b"), s.in_flight) == (2, 1, 3)
    s.release("a")
    assert (s.agent_in_flight("a"), s.in_flight) == (1, 2)
    s.release("a")
    assert s.agent_in_flight("a") == 0 and "a" not in s._per_agent and s.agent_in_flight("b") == 1


def test_a_full_queue_refuses_equal_or_lower_work_and_preempts_the_lowest_for_higher() -> None:
    now = [0.0]
    s = Scheduler(max_in_flight=1, queue_limit=1, aging_s=1000, clock=lambda: now[0])

    async def main() -> None:
        await s.acquire("runner", 5, 1)
        queued = asyncio.create_task(s.acquire("queued", 5, 1))
        await asyncio.sleep(0)
        for prio in (3, 3, 5):  # lower, and equal: refused at once, the queued call stays
            with pytest.raises(SchedulerBusy) as busy:
                await s.acquire(f"p{prio}", prio, 1)
            assert busy.value.reasons and s.queue_depth(5) == 1
        high = asyncio.create_task(s.acquire("high", 7, 1))
        await asyncio.sleep(0)
        with pytest.raises(Preempted) as out:
            await queued
        assert out.value.reasons and s.queue_depth(7) == 1
        s.release("runner")
        await high

    asyncio.run(main())
    assert (s.stats[3].refused, s.stats[5].refused, s.stats[5].preempted, s.stats[7].admitted) == (2, 1, 1, 1)


def test_a_slot_granted_as_its_waiter_is_cancelled_is_given_back() -> None:
    """release() grants the waiter's future, then the waiting task is cancelled before it runs:
    the slot (global and the agent's own) must come back, or the agent is stuck at its limit."""

    async def main() -> None:
        s = Scheduler(max_in_flight=1)
        await s.acquire("holder", 5, 1)
        waiter = asyncio.create_task(s.acquire("w", 5, 1))
        await asyncio.sleep(0)
        assert s.queue_depth() == 1
        s.release("holder")  # grants "w" (its future has a result now) ...
        waiter.cancel()  # ... and "w" is cancelled before it resumed
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert (s.in_flight, s.agent_in_flight("w"), s.queue_depth()) == (0, 0, 0)
        assert await s.acquire("w", 5, 1) == 0.0  # at once: nothing of the cancelled call is held

    asyncio.run(main())


def test_on_equal_standing_the_longer_waiter_goes_first() -> None:
    """Aging makes a call queued one aging_s earlier at priority 1 stand equal to a fresh
    priority 2 call: the one that waited longer runs first (the clock is the scheduler's seam)."""
    now = [0.0]
    s = Scheduler(max_in_flight=1, aging_s=1.0, clock=lambda: now[0])

    async def main() -> list[str]:
        order: list[str] = []
        await s.acquire("holder", 9, 8)

        async def job(agent: str, prio: int) -> None:
            await s.acquire(agent, prio, 8)
            order.append(agent)
            s.release(agent)

        old = asyncio.create_task(job("old", 1))
        await asyncio.sleep(0)
        now[0] = 1.0
        new = asyncio.create_task(job("new", 2))
        await asyncio.sleep(0)
        s.release("holder")  # old: 1 + 1/1 = 2.0, new: 2 + 0 = 2.0
        await asyncio.gather(old, new)
        return order

    assert asyncio.run(main()) == ["old", "new"]


def test_preemptions_and_refusals_are_counted_per_level_and_say_why() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=1, queue_limit=1, aging_s=1000)
        await s.acquire("holder", 9, 1)
        for _ in range(2):
            low = asyncio.create_task(s.acquire("low", 2, 1))
            await asyncio.sleep(0)
            high = asyncio.create_task(s.acquire("high", 6, 1))
            await asyncio.sleep(0)
            with pytest.raises(Preempted) as pre:
                await low
            assert pre.value.reasons  # the preempted caller is told why
            high.cancel()
            with pytest.raises(asyncio.CancelledError):
                await high
        assert s.stats[2].preempted == 2 and s.stats[6].preempted == 0
        low = asyncio.create_task(s.acquire("low", 2, 1))
        await asyncio.sleep(0)
        for n in (1, 2):
            with pytest.raises(SchedulerBusy) as busy:
                await s.acquire("other", 2, 1)
            assert busy.value.reasons and s.stats[2].refused == n
        low.cancel()
        with pytest.raises(asyncio.CancelledError):
            await low

    asyncio.run(main())


def test_a_full_queue_refuses_a_call_even_when_its_own_slot_is_free() -> None:
    """The documented rule (module docstring): a call arriving at a full queue preempts a lower
    one or is refused, also when it could run at once (here: "a" waits on its own limit only)."""

    async def main() -> None:
        s = Scheduler(max_in_flight=8, queue_limit=1)
        await s.acquire("a", 5, 1)
        queued = asyncio.create_task(s.acquire("a", 5, 1))  # waits for a's own slot
        await asyncio.sleep(0)
        assert s.queue_depth() == 1 and s.in_flight == 1
        with pytest.raises(SchedulerBusy):
            await s.acquire("b", 5, 1)
        s.release("a")
        await queued
        assert await s.acquire("b", 5, 1) == 0.0  # an empty queue: a free slot is taken at once
        assert s.in_flight == 2

    asyncio.run(main())


def test_a_slot_granted_from_the_queue_counts_for_its_agent() -> None:
    """Found by mutation testing (group "runtime-security"): a waiter granted a freed slot must
    count against its own agent's limit, or that agent could exceed it."""

    async def main() -> None:
        s = Scheduler(max_in_flight=1)
        await s.acquire("a", 5, 1)
        waiter = asyncio.create_task(s.acquire("b", 5, 1))
        await asyncio.sleep(0.01)
        assert s.queue_depth() == 1
        s.release("a")
        await waiter
        assert s.agent_in_flight("b") == 1 and s.agent_in_flight("a") == 0 and s.in_flight == 1
        s.release("b")
        assert s.agent_in_flight("b") == 0 and s.in_flight == 0

    asyncio.run(main())


def test_a_waiter_cancelled_in_the_turn_a_slot_frees_does_not_take_it() -> None:
    """The caller cancels a queued call (its future is cancelled at once, its task has not run
    yet) and, in the same turn, the holder releases: the slot goes to the next waiter, not to
    the cancelled one (whose future cannot take a result), and nothing is held afterwards."""

    async def main() -> None:
        s = Scheduler(max_in_flight=1)
        await s.acquire("holder", 5, 1)
        gone = asyncio.create_task(s.acquire("gone", 5, 1))
        await asyncio.sleep(0)
        nxt = asyncio.create_task(s.acquire("next", 5, 1))
        await asyncio.sleep(0)
        assert s.queue_depth() == 2
        gone.cancel()  # still in the deque: its task resumes only on a later turn
        s.release("holder")
        await nxt
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (s.in_flight, s.agent_in_flight("next"), s.agent_in_flight("gone")) == (1, 1, 0)
        s.release("next")
        assert (s.in_flight, s.queue_depth()) == (0, 0)

    asyncio.run(main())


def test_a_cancelled_waiter_picked_as_the_preemption_victim_just_leaves() -> None:
    """At a full queue, the lowest waiter was cancelled by its caller in this same turn: the
    higher call takes its place and nobody is told Preempted (that caller is gone)."""

    async def main() -> None:
        s = Scheduler(max_in_flight=1, queue_limit=1, aging_s=1000)
        await s.acquire("holder", 9, 1)
        low = asyncio.create_task(s.acquire("low", 1, 1))
        await asyncio.sleep(0)
        high = asyncio.create_task(s.acquire("high", 7, 1))  # its first step runs before ...
        low.cancel()  # ... the cancelled task resumes to leave the queue
        await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await low
        assert (s.queue_depth(7), s.stats[1].preempted) == (1, 0)
        s.release("holder")
        await high
        s.release("high")
        assert (s.in_flight, s.queue_depth()) == (0, 0)

    asyncio.run(main())


# -- the per-principal caps (runtime.max_in_flight_per_principal, queue_limit_per_principal) --


def test_a_principal_at_its_cap_waits_though_global_slots_are_free() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=8, max_in_flight_per_principal=2)
        await s.acquire("a1", 5, 8, "key:a")
        await s.acquire("a2", 5, 8, "key:a")  # another agent (session) of the same principal
        third = asyncio.create_task(s.acquire("a3", 5, 8, "key:a"))
        await asyncio.sleep(0.01)
        assert not third.done() and (s.in_flight, s.queue_depth(), s.principal_queued("key:a")) == (2, 1, 1)
        s.release("a1", "key:a")
        await third
        assert (s.principal_in_flight("key:a"), s.principal_queued("key:a"), s.in_flight) == (2, 0, 2)

    asyncio.run(main())


def test_a_waiter_at_its_principals_cap_is_stepped_over_not_waited_behind() -> None:
    """A's queued call is first in its level (and higher priority), but A is at its cap: B's
    call behind it takes the free global slot."""

    async def main() -> None:
        s = Scheduler(max_in_flight=2, max_in_flight_per_principal=1, aging_s=1000)
        await s.acquire("b0", 5, 8, "key:b")  # so the queue is in use for what follows
        await s.acquire("a0", 5, 8, "key:a")
        a_more = asyncio.create_task(s.acquire("a1", 9, 8, "key:a"))  # A at its cap: waits
        b_more = asyncio.create_task(s.acquire("b1", 5, 8, "key:b"))  # B at its cap: waits
        await asyncio.sleep(0)
        assert s.queue_depth() == 2
        s.release("b0", "key:b")  # one global slot: A stands higher, but only B may take it
        await b_more
        assert not a_more.done() and s.principal_in_flight("key:b") == 1
        s.release("a0", "key:a")
        await a_more
        assert (s.principal_in_flight("key:a"), s.in_flight, s.queue_depth()) == (1, 2, 0)

    asyncio.run(main())


def test_a_principal_with_its_queue_share_waiting_is_refused_and_counted() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=8, max_in_flight_per_principal=1, queue_limit_per_principal=2)
        await s.acquire("a", 5, 8, "key:a")
        waiting = [asyncio.create_task(s.acquire("a", 5, 8, "key:a")) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(SchedulerBusy) as busy:
            await s.acquire("a", 9, 8, "key:a")  # no preemption of its own or others' work
        assert busy.value.reasons and type(busy.value) is SchedulerBusy
        assert (s.refused_per_principal, s.principal_queued("key:a")) == (1, 2)
        # counted at the refused call's level (for /metrics), not as a full queue
        assert [st.refused_principal for st in s.stats] == [0] * 9 + [1]
        assert not any(st.refused for st in s.stats)
        await s.acquire("b", 5, 8, "key:b")  # another principal: neither refused nor held back
        assert s.principal_in_flight("key:b") == 1
        for w in waiting:
            s.release("a", "key:a")
            await w
        s.release("a", "key:a")
        s.release("b", "key:b")
        assert (s.in_flight, s.queue_depth(), s.refused_per_principal) == (0, 0, 1)
        assert not s._per_principal and not s._queued_by_principal  # nothing kept per idle caller

    asyncio.run(main())


def test_a_noisy_principal_cannot_hold_every_global_slot_from_another() -> None:
    """A floods slow calls; B's quick calls still run while A's wait (fairness), and A's calls
    all complete in time."""

    async def main() -> None:
        s = Scheduler(max_in_flight=4, max_in_flight_per_principal=3)
        done: list[str] = []

        async def job(who: str, hold: float) -> None:
            async with s.slot(who, 5, 100, f"key:{who}"):
                assert s.principal_in_flight(f"key:{who}") <= 3
                await asyncio.sleep(hold)
            done.append(who)

        flood = [asyncio.create_task(job("a", 0.2)) for _ in range(9)]
        await asyncio.sleep(0.01)
        assert s.principal_in_flight("key:a") == 3 and s.in_flight == 3
        t = time.perf_counter()
        await asyncio.gather(*(job("b", 0.0) for _ in range(4)))
        assert time.perf_counter() - t < 0.15  # not behind A's 0.2 s calls
        assert done[:4] == ["b"] * 4
        await asyncio.gather(*flood)
        assert done.count("a") == 9 and (s.in_flight, s.queue_depth()) == (0, 0)

    asyncio.run(main())


def test_calls_without_a_principal_have_no_principal_cap() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=8, max_in_flight_per_principal=1)
        for i in range(3):
            assert await s.acquire(f"x{i}", 5, 8) == 0.0
        assert s.in_flight == 3 and not s._per_principal

    asyncio.run(main())


def test_a_cancelled_waiter_gives_its_principals_queue_share_back() -> None:
    async def main() -> None:
        s = Scheduler(max_in_flight=1, queue_limit_per_principal=1)
        await s.acquire("holder", 5, 1, "key:h")
        waiter = asyncio.create_task(s.acquire("a", 5, 1, "key:a"))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert s.principal_queued("key:a") == 0
        again = asyncio.create_task(s.acquire("a", 5, 1, "key:a"))  # not refused: its share is back
        await asyncio.sleep(0)
        s.release("holder", "key:h")
        await again
        assert (s.principal_in_flight("key:a"), s.principal_in_flight("key:h")) == (1, 0)

    asyncio.run(main())
