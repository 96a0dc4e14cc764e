"""CallCounters: bucketed windows equal an exact reference at the bucket's resolution, the
rate limiter is exact at its limit, work per call does not grow with history, state is freed.

The clock is injected everywhere: waiting real minutes is not a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import counters as counters_mod
from gateway.policy.counters import CallCounters, SlidingCounter


@dataclass
class ExactReference:
    """Today's semantics, kept naively: every accepted call's time, scanned on every question."""

    calls: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def _times(self, principal: str, tool: str | None = None) -> list[float]:
        return [t for (p, tl), ts in self.calls.items() if p == principal and tool in (None, tl) for t in ts]

    def exact(self, principal: str, now: float, window: float, tool: str | None = None) -> int:
        return sum(1 for t in self._times(principal, tool) if t > now - window)

    def bucketed(self, principal: str, now: float, buckets: int, res: float, tool: str | None = None) -> int:
        """The exact count at the bucket's resolution: calls whose bucket is not older than
        the bucket holding ``now - buckets * res``."""
        oldest = math.floor(now / res) - buckets
        return sum(1 for t in self._times(principal, tool) if math.floor(t / res) >= oldest)

    def admits(self, principal: str, tool: str, now: float, limit: int | None) -> bool:
        return limit is None or self.exact(principal, now, 60.0, tool) < limit

    def record(self, principal: str, tool: str, now: float) -> None:
        self.calls.setdefault((principal, tool), []).append(now)


# A step: (clock advance in seconds, principal, tool, limit). Mostly small gaps (many calls
# share a bucket), some around the window edges, some long enough to empty every window.
gaps = st.one_of(
    st.floats(min_value=0.0, max_value=2.0),
    st.floats(min_value=55.0, max_value=65.0),
    st.floats(min_value=0.0, max_value=4000.0),
)
steps = st.lists(
    st.tuples(
        gaps,
        st.sampled_from(["alice", "bob", "ci"]),
        st.sampled_from(["fs__read", "time__now"]),
        st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(min_value=0.0, max_value=10_000.0), history=steps)
def test_answers_equal_the_exact_reference(
    start: float, history: list[tuple[float, str, str, int | None]]
) -> None:
    now = [start]
    c = CallCounters(clock=lambda: now[0])
    ref = ExactReference()
    for gap, principal, tool, limit in history:
        now[0] += gap
        # the limiter is exact: admitted iff fewer than `limit` accepted calls in (now - 60, now]
        expected = ref.admits(principal, tool, now[0], limit)
        assert c.try_acquire(principal, tool, limit) is expected
        if expected:
            ref.record(principal, tool, now[0])
        for p in ("alice", "bob", "ci"):
            minute, hour = c.principal_counts(p)
            assert minute == ref.bucketed(p, now[0], 60, 1.0)
            assert hour == ref.bucketed(p, now[0], 60, 60.0)
            # conservative: never below the exact window, never beyond one extra bucket
            assert ref.exact(p, now[0], 60.0) <= minute <= ref.exact(p, now[0], 61.0)
            assert ref.exact(p, now[0], 3600.0) <= hour <= ref.exact(p, now[0], 3660.0)
            for t in ("fs__read", "time__now"):
                assert c.tool_count(p, t) == ref.bucketed(p, now[0], 60, 1.0, tool=t)


@settings(max_examples=100, deadline=None)
@given(history=st.lists(st.tuples(st.floats(min_value=0.0, max_value=20.0), st.integers(3, 8)), max_size=150))
def test_limits_above_the_exact_cap_are_never_exceeded(history: list[tuple[float, int]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        # Shrink the exact log's cap so the bucketed fallback is what decides these limits.
        mp.setattr(counters_mod, "EXACT_LIMIT_MAX", 2)
        _check_never_exceeded(history)


def _check_never_exceeded(history: list[tuple[float, int]]) -> None:
    now = [0.0]
    c = CallCounters(clock=lambda: now[0])
    admitted: list[float] = []
    for gap, limit in history:
        now[0] += gap
        if c.try_acquire("p", "t", limit):
            admitted.append(now[0])
            in_window = sum(1 for t in admitted if t > now[0] - 60.0)
            assert in_window <= limit


def test_limit_admits_exactly_the_limit_then_refuses() -> None:
    now = [500.25]
    c = CallCounters(clock=lambda: now[0])
    assert [c.try_acquire("p", "t", 5) for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] += 59.9  # still inside the window of the first five
    assert not c.try_acquire("p", "t", 5)
    now[0] += 0.2  # 60.1 s after them: all five slots free again, to the call
    assert [c.try_acquire("p", "t", 5) for _ in range(6)] == [True] * 5 + [False]
    assert c.try_acquire("p", "t", None)  # no limit: recorded
    assert not c.try_acquire("p", "t", 0)


def _work_per_call(history: int) -> float:
    """Ops per call for 100 calls made after ``history`` calls spread over the last hour."""
    now = [0.0]
    c = CallCounters(clock=lambda: now[0])
    step = 3600.0 / history
    for _ in range(history):
        c.try_acquire("busy", "fs__read", 10**9)
        now[0] += step
    before = c.ops()
    for _ in range(100):
        c.try_acquire("busy", "fs__read", 10**9)
        c.principal_counts("busy")
        c.tool_count("busy", "fs__read")
        now[0] += step
    return (c.ops() - before) / 100


@pytest.mark.slow
def test_work_per_call_does_not_grow_with_history() -> None:
    small, large = _work_per_call(10**3), _work_per_call(10**6)
    # A scan of the hour would be ~10^3 and ~10^6 ops per call. Here the work is bucket steps
    # (the time elapsed between calls, at most a ring per counter), one add per counter and
    # one log pop per call: the sparse history pays more bucket steps, the busy one no more.
    assert small <= 20
    assert large <= 20
    assert large <= small


def test_sliding_counter_work_is_bounded_by_its_buckets() -> None:
    sc = SlidingCounter(60, 1.0)
    for i in range(10_000):
        sc.add(i * 0.01)
    before = sc.ops
    sc.count(10_000.0)  # an idle gap longer than the window: one reset, not a walk
    assert sc.ops - before == 1
    before = sc.ops
    sc.add(10_030.0)
    assert sc.ops - before <= 31


def test_idle_principals_and_tools_are_freed() -> None:
    now = [0.0]
    c = CallCounters(clock=lambda: now[0])
    for i in range(1000):
        c.try_acquire(f"p{i}", f"tool{i % 7}", 10)
    assert c.sizes() == {"principals": 1000, "principal_tools": 1000}
    now[0] += 3700  # every window is empty
    for _ in range(600):  # each call frees a few stale entries
        c.try_acquire("alive", "t", 10)
        now[0] += 0.001
    assert c.sizes() == {"principals": 1, "principal_tools": 1}
    assert c.principal_counts("p3") == (0, 0)  # freed, and the answer is the same as before


def test_a_reserved_call_is_counted_and_reads_only_the_calls_before_it() -> None:
    now = [1000.5]
    c = CallCounters(clock=lambda: now[0])
    first = c.reserve("p", "t")
    assert first[:3] == (0, 0, 0)  # nothing before it
    assert c.principal_counts("p") == (1, 1) and c.tool_count("p", "t") == 1  # it, undecided
    assert c.reserve("p", "t")[:3] == (1, 1, 1)  # the one reserved before it
    assert c.reserve("p", "other")[:3] == (2, 2, 0)  # another tool: the principal's calls only


def test_a_released_call_leaves_the_counts_as_they_were() -> None:
    now = [1000.5]
    c = CallCounters(clock=lambda: now[0])
    c.try_acquire("p", "t", None)
    before = c.reserve("p", "t")
    c.release("p", "t", before[3:])
    assert c.principal_counts("p") == (1, 1) and c.tool_count("p", "t") == 1
    assert c.reserve("p", "t")[:3] == before[:3]  # the next call reads what the released one read


def test_a_release_after_the_minute_moved_on_takes_back_only_its_own_call() -> None:
    now = [1000.5]
    c = CallCounters(clock=lambda: now[0])
    held = c.reserve("p", "t")  # its decision takes long
    now[0] += 50.0
    assert c.try_acquire("p", "t", None)  # another call, admitted meanwhile
    now[0] += 40.0  # the held call's second has left the minute window, not the hour's
    assert c.principal_counts("p") == (1, 2)
    c.release("p", "t", held[3:])
    assert c.principal_counts("p") == (1, 1)  # the other call's counts stay
    assert c.tool_count("p", "t") == 1
    c.release("p", "t", held[3:])  # once more: nothing of anyone else's is taken
    assert c.principal_counts("p") == (1, 1) and c.tool_count("p", "t") == 1


def test_take_back_never_removes_a_newer_bucket_in_the_same_slot() -> None:
    sc = SlidingCounter(60, 1.0)
    mine = sc.add(0.5)
    assert sc.add(61.5) == 61  # 61 buckets: bucket 61 reuses bucket 0's slot
    assert not sc.holds(mine)
    sc.take_back(mine)
    assert sc.count(61.5) == 1  # the newer call stays counted


def test_take_back_after_the_ring_moved_on_within_the_window() -> None:
    sc = SlidingCounter(60, 1.0)
    mine = sc.add(10.5)
    sc.add(30.2)
    sc.add(59.9)
    assert sc.count(70.0) == 3 and sc.holds(mine)
    sc.take_back(mine)
    assert sc.count(70.0) == 2
    sc.take_back(mine)  # its bucket is empty now: never below zero
    assert sc.count(70.0) == 2 and sc.count(71.0) == 2  # bucket 10 leaves with nothing in it


def test_take_back_finds_a_call_counted_while_the_clock_went_back() -> None:
    sc = SlidingCounter(60, 1.0)
    sc.add(10.5)
    mine = sc.add(5.0)  # a clock that went back: counted in the newest bucket, 10
    assert mine == 10
    sc.take_back(mine)
    assert sc.count(10.5) == 1


def test_admitting_a_reserved_call_records_it_in_the_limit_once() -> None:
    now = [500.25]
    c = CallCounters(clock=lambda: now[0])
    held = [c.reserve("p", "t") for _ in range(3)]
    assert [c.admit("p", "t", 2, h[5]) for h in held] == [True, True, False]
    c.release("p", "t", held[2][3:])  # the refused one is taken back
    assert c.principal_counts("p") == (2, 2) and c.tool_count("p", "t") == 2
    assert not c.try_acquire("p", "t", 2)  # the limit holds for both ways in
    now[0] += 60.1
    assert c.admit("p", "t", 2, c.reserve("p", "t")[5])


def test_a_limit_above_the_exact_cap_does_not_count_the_reserved_call_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(counters_mod, "EXACT_LIMIT_MAX", 2)  # the bucketed count decides
    now = [500.25]
    c = CallCounters(clock=lambda: now[0])
    admitted = []
    for _ in range(4):
        held = c.reserve("p", "t")
        admitted.append(c.admit("p", "t", 3, held[5]))
        if not admitted[-1]:
            c.release("p", "t", held[3:])
    assert admitted == [True, True, True, False]
    assert c.tool_count("p", "t") == 3


# A step of reservations: (clock advance, what to do, principal, tool, limit, which held call)
reservation_steps = st.lists(
    st.tuples(
        gaps,
        st.sampled_from(["reserve", "reserve", "admit", "release"]),
        st.sampled_from(["alice", "bob"]),
        st.sampled_from(["fs__read", "time__now"]),
        st.one_of(st.none(), st.integers(min_value=0, max_value=4)),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(start=st.floats(min_value=0.0, max_value=10_000.0), history=reservation_steps)
def test_reserved_calls_are_counted_until_released(
    start: float, history: list[tuple[float, str, str, str, int | None, int]]
) -> None:
    """Every call reserved and not released is counted from its reservation on; the rate
    limit counts admitted calls only, exactly, from their admission."""
    now = [start]
    c = CallCounters(clock=lambda: now[0])
    counted = ExactReference()  # reserved and not released, at their reservation's time
    limited = ExactReference()  # admitted, at their admission's time
    held: list[tuple[str, str, float, tuple[int, int, int, int, int, int]]] = []
    for gap, what, principal, tool, limit, pick in history:
        now[0] += gap
        if what == "reserve":
            got = c.reserve(principal, tool)
            assert got[:3] == (
                counted.bucketed(principal, now[0], 60, 1.0),
                counted.bucketed(principal, now[0], 60, 60.0),
                counted.bucketed(principal, now[0], 60, 1.0, tool=tool),
            )
            counted.record(principal, tool, now[0])
            held.append((principal, tool, now[0], got))
        elif held:
            principal, tool, at, got = held.pop(pick % len(held))
            expected = what == "admit" and limited.admits(principal, tool, now[0], limit)
            if what == "admit":
                assert c.admit(principal, tool, limit, got[5]) is expected
            if expected:
                limited.record(principal, tool, now[0])
            else:
                c.release(principal, tool, got[3:])
                counted.calls[(principal, tool)].remove(at)
        for p in ("alice", "bob"):
            assert c.principal_counts(p) == (
                counted.bucketed(p, now[0], 60, 1.0),
                counted.bucketed(p, now[0], 60, 60.0),
            )
            for t in ("fs__read", "time__now"):
                assert c.tool_count(p, t) == counted.bucketed(p, now[0], 60, 1.0, tool=t)
