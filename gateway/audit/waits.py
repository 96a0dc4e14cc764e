"""``AuditLog.record``'s timeouts: one timer per event loop for all its waiting records.

A record whose commit has not come within its ``timeout`` fails its caller with ``AuditError``
(the event stays queued). A ``call_later`` per record, cancelled when the commit came (every
time but a stalled disk), cost two heap operations on the loop's timer heap per audited call,
each comparing ``TimerHandle``s in Python (``TimerHandle.__lt__``: 5-14 calls a call, the heap
holding up to a hundred cancelled 30 s timers between clean-ups). Here the waiters wait in
arrival order and one timer, due at the earliest deadline, expires what is due and re-arms for
the next: under a steady stream of calls, one timer per ``timeout``.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import deque
from typing import Any

from gateway.deadlines import EarliestTimer
from gateway.errors import AuditError


def expire(waiter: asyncio.Future[Any], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(AuditError(f"audit write not committed within {timeout}s"))


class LoopWaits:
    """The waiting records of one event loop on one timer (``gateway.deadlines.EarliestTimer``),
    touched only on that loop's thread."""

    __slots__ = ("_pending", "_timer")

    def __init__(self) -> None:
        # (deadline on the loop's clock, waiter, timeout), in arrival order
        self._pending: deque[tuple[float, asyncio.Future[Any], float]] = deque()
        self._timer = EarliestTimer(self._expire)

    def add(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], timeout: float) -> None:
        """Fail ``waiter`` after ``timeout`` seconds unless it is settled by then."""
        deadline = loop.time() + timeout
        self._pending.append((deadline, waiter, timeout))
        self._timer.include(loop, deadline)

    def settled(self) -> None:
        """A record's wait ended: forget the settled waiters at the front (all of them once the
        last waiter ends: nothing here keeps a finished caller's future)."""
        pending = self._pending
        while pending and pending[0][1].done():
            pending.popleft()

    def _expire(self, due: float) -> float:
        following, left = math.inf, deque[tuple[float, asyncio.Future[Any], float]]()
        for entry in self._pending:
            deadline, waiter, timeout = entry
            if waiter.done():
                continue
            if deadline <= due:
                expire(waiter, timeout)
            else:
                left.append(entry)
                following = min(following, deadline)
        self._pending = left
        return following


class RecordWaits:
    """One ``LoopWaits`` per event loop that records; a closed loop's are dropped when a new
    loop first records (so a log used from many ``asyncio.run`` calls keeps no closed loop)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loops: dict[asyncio.AbstractEventLoop, LoopWaits] = {}

    def of(self, loop: asyncio.AbstractEventLoop) -> LoopWaits:
        waits = self._loops.get(loop)
        if waits is None:
            with self._lock:
                for lp in [lp for lp in self._loops if lp.is_closed()]:
                    del self._loops[lp]
                waits = self._loops[loop] = LoopWaits()
        return waits
