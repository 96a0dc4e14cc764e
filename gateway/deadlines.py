"""Many deadlines on one event-loop timer.

A timer made and cancelled per call (``call_later``, ``asyncio.timeout``) costs ~20 function
calls and the loop's heap work; the hot path's per-call clocks (the upstream lane's response
waits, the scheduler's execution budgets) share one timer each instead, armed at the earliest
deadline still to come.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class EarliestTimer:
    """One loop timer, armed at the earliest deadline it was asked to meet (``include``). When
    it fires it calls ``expire(due)``, which ends everything whose deadline is at or before
    ``due`` and returns the next deadline still to come (``math.inf``: none), and re-arms for it.
    """

    __slots__ = ("_at", "_expire", "_loop", "_timer")

    def __init__(self, expire: Callable[[float], float]) -> None:
        self._expire = expire
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf

    def include(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Fire by ``deadline`` (``loop``'s time) at the latest."""
        if deadline < self._at:
            self._arm(loop, deadline)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._loop, self._at = loop, at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        # the loop runs a timer up to its clock's resolution early: what it was armed for is due
        due = max(self._at, loop.time())
        self._timer, self._at = None, math.inf
        following = self._expire(due)
        if following < math.inf:
            self._arm(loop, following)
