"""The priority scheduler every ``tools/call`` passes before dispatch (the seed's AgentScheduler).

- One FIFO queue per priority level (0 lowest .. ``LEVELS - 1`` highest).
- A call runs at once when a global slot (``runtime.max_in_flight``), a slot of its agent
  (``max_concurrent_calls`` of its resources) and a slot of its principal
  (``runtime.max_in_flight_per_principal``, over all of that caller's sessions and agents)
  are free and nobody better is waiting; otherwise it waits. One caller therefore cannot
  take every global slot: another principal's call still finds one.
- A waiter whose agent or principal is at its own cap is skipped, never blocks its level:
  the next waiter of the level (another caller's) may take the free slot.
- When a slot frees, the waiter with the highest *effective* priority runs next:
  ``priority + waited_seconds / runtime.aging_s``. Waiting raises a call's standing, so low
  priority work always completes under sustained high-priority load (no starvation).
- One principal's queued calls are bounded (``runtime.queue_limit_per_principal``): past
  it, its next call is refused with ``SchedulerBusy`` (no preemption: a caller cannot push
  out others' work by flooding), and counted per level (``PriorityStats.refused_principal``;
  ``refused_per_principal`` sums them).
- The queue is bounded (``runtime.queue_limit``). A call arriving at a full queue preempts
  the queued call of lowest effective priority if its own is higher (that caller gets a clear
  ``Preempted`` error at once), else it is refused with ``SchedulerBusy`` (counted in
  ``PriorityStats.refused``). Never a hang.

Everything runs on the event loop; one decision is O(levels), independent of the number
of agents (the benchmark checks this with 10,000), plus one step per waiter skipped because
its agent or principal is at its cap: bounded by the queue (``queue_limit``), and one
principal adds at most ``queue_limit_per_principal`` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway.errors import Preempted, SchedulerBusy

LEVELS = 10


@dataclass(slots=True, eq=False)
class _Waiter:
    agent: str
    principal: str | None  # None: no per-principal cap (the runtime always names one)
    priority: int
    limit: int
    enqueued: float
    future: asyncio.Future[None]


@dataclass
class PriorityStats:
    """Per priority level, for ``/metrics``: calls admitted, total and max wait, preempted,
    and refused (at a full queue, or at the caller's own queue share)."""

    admitted: int = 0
    wait_s_total: float = 0.0
    wait_s_max: float = 0.0
    preempted: int = 0
    refused: int = 0  # the queue was full (runtime.queue_limit) and nothing queued stood lower
    refused_principal: int = 0  # the caller had runtime.queue_limit_per_principal calls waiting


@dataclass
class Scheduler:
    max_in_flight: int = 64
    queue_limit: int = 1024
    max_in_flight_per_principal: int = 16
    queue_limit_per_principal: int = 256
    aging_s: float = 1.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        self._queues: list[deque[_Waiter]] = [deque() for _ in range(LEVELS)]
        self._queued = 0
        self.in_flight = 0
        self._per_agent: dict[str, int] = {}
        self._per_principal: dict[str, int] = {}  # calls in flight, by principal
        self._queued_by_principal: dict[str, int] = {}
        self.stats = [PriorityStats() for _ in range(LEVELS)]
        self.decisions = 0
        self.decision_s_total = 0.0

    # -- views --------------------------------------------------------------------------------

    @property
    def refused_per_principal(self) -> int:
        """Calls refused at ``runtime.queue_limit_per_principal``, over all levels."""
        return sum(st.refused_principal for st in self.stats)

    def queue_depth(self, priority: int | None = None) -> int:
        if priority is None:
            return self._queued
        return len(self._queues[priority])

    def agent_in_flight(self, agent: str) -> int:
        return self._per_agent.get(agent, 0)

    def principal_in_flight(self, principal: str) -> int:
        return self._per_principal.get(principal, 0)

    def principal_queued(self, principal: str) -> int:
        return self._queued_by_principal.get(principal, 0)

    # -- acquiring and releasing slots --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(
        self, agent: str, priority: int, limit: int, principal: str | None = None
    ) -> AsyncIterator[float]:
        """Hold one slot for ``agent`` while the block runs; yields the seconds waited."""
        waited = await self.acquire(agent, priority, limit, principal)
        try:
            yield waited
        finally:
            self.release(agent, principal)

    async def acquire(self, agent: str, priority: int, limit: int, principal: str | None = None) -> float:
        start = time.perf_counter()
        priority = min(max(priority, 0), LEVELS - 1)
        stats = self.stats[priority]
        if self._queued == 0 and self._free(agent, limit, principal):
            self._take(agent, principal)
            stats.admitted += 1
            self._decided(start)
            return 0.0
        now = self._now()
        if principal is not None:
            self._principal_room(principal, priority)
        self._make_room(priority, now)
        future = asyncio.get_running_loop().create_future()
        waiter = _Waiter(agent, principal, priority, max(limit, 1), now, future)
        self._queues[priority].append(waiter)
        self._queued += 1
        if principal is not None:
            self._queued_by_principal[principal] = self._queued_by_principal.get(principal, 0) + 1
        self._decided(start)
        self._drain()  # a slot may be free for this agent even though others wait for theirs
        try:
            await waiter.future
        except BaseException:
            if not waiter.future.done() or waiter.future.cancelled():
                self._forget(waiter)
            elif waiter.future.exception() is None:
                self.release(agent, principal)  # granted just as we were cancelled: give it back
            raise
        waited = self._now() - now
        stats.admitted += 1
        stats.wait_s_total += waited
        stats.wait_s_max = max(stats.wait_s_max, waited)
        return waited

    def release(self, agent: str, principal: str | None = None) -> None:
        """Give back a slot taken for ``agent`` (and ``principal``: the same one as acquired)."""
        self.in_flight -= 1
        _decrement(self._per_agent, agent)
        if principal is not None:
            _decrement(self._per_principal, principal)
        self._drain()

    # -- internals ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock()

    def _decided(self, start: float) -> None:
        self.decisions += 1
        self.decision_s_total += time.perf_counter() - start

    def _free(self, agent: str, limit: int, principal: str | None) -> bool:
        return (
            self.in_flight < self.max_in_flight
            and self._per_agent.get(agent, 0) < max(limit, 1)
            and self._principal_free(principal)
        )

    def _principal_free(self, principal: str | None) -> bool:
        return principal is None or self._per_principal.get(principal, 0) < self.max_in_flight_per_principal

    def _take(self, agent: str, principal: str | None) -> None:
        self.in_flight += 1
        self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        if principal is not None:
            self._per_principal[principal] = self._per_principal.get(principal, 0) + 1

    def _effective(self, w: _Waiter, now: float) -> float:
        return w.priority + (now - w.enqueued) / self.aging_s

    def _drain(self) -> None:
        """Grant free slots to the best eligible waiters."""
        while self._queued and self.in_flight < self.max_in_flight:
            best = self._best(self._now())
            if best is None:
                return
            self._forget(best)
            if best.future.done():  # cancelled by its caller, whose task has not resumed yet
                continue
            self._take(best.agent, best.principal)
            best.future.set_result(None)

    def _best(self, now: float) -> _Waiter | None:
        best: _Waiter | None = None
        best_score = float("-inf")
        for q in self._queues:
            # FIFO per level: the first eligible one is the oldest of its level; a waiter whose
            # agent or principal is at its cap is stepped over, so it holds back only itself
            for w in q:
                if self._per_agent.get(w.agent, 0) < w.limit and self._principal_free(w.principal):
                    score = self._effective(w, now)
                    if score > best_score:
                        best, best_score = w, score
                    break
        return best

    def _forget(self, w: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._queues[w.priority].remove(w)
            self._queued -= 1
            if w.principal is not None:
                _decrement(self._queued_by_principal, w.principal)

    def _principal_room(self, principal: str, priority: int) -> None:
        """Refuse a call of a principal that has ``queue_limit_per_principal`` calls waiting."""
        queued = self._queued_by_principal.get(principal, 0)
        if queued < self.queue_limit_per_principal:
            return
        self.stats[priority].refused_principal += 1
        raise SchedulerBusy(
            f"{principal} has {queued} calls waiting (runtime.queue_limit_per_principal = "
            f"{self.queue_limit_per_principal})",
            reasons=[
                f"{self._per_principal.get(principal, 0)} of its calls in flight "
                f"(runtime.max_in_flight_per_principal = {self.max_in_flight_per_principal}); "
                "retry when some have ended"
            ],
        )

    def _make_room(self, priority: int, now: float) -> None:
        """At a full queue: preempt the lowest queued call if it stands below ``priority``."""
        if self._queued < self.queue_limit:
            return
        victim: _Waiter | None = None
        for q in self._queues:
            if q:
                victim = q[-1]  # the newest of the lowest non-empty level has waited least
                break
        if victim is None or self._effective(victim, now) >= priority:
            self.stats[priority].refused += 1
            raise SchedulerBusy(
                f"scheduler queue full ({self.queue_limit} calls waiting, runtime.queue_limit)",
                reasons=["every queued call has the same or higher priority; retry later"],
            )
        self._forget(victim)
        if victim.future.done():  # cancelled by its caller already: leaving makes the room
            return
        self.stats[victim.priority].preempted += 1
        victim.future.set_exception(
            Preempted(
                f"call preempted by priority {priority} work (queue full at runtime.queue_limit = {self.queue_limit})",
                reasons=[f"queued at priority {victim.priority}; retry later"],
            )
        )


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 1) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)  # no key per idle agent or principal: the dicts stay small
