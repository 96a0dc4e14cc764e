"""Fire-and-forget events held on their event loop's thread until the next event someone waits for.

A call's agent-state flips (``AuditLog.emit``, two per call) are fire-and-forget; its record
(``AuditLog.record``) is awaited. Put on the writer's queue one by one, each event woke the writer
thread (a futex wake, a context switch, a turn at the GIL the call's own thread holds), three
times per call. Held here instead, they go to the queue right before the record, the append, the
flush... made on the same thread (in order, the writer woken once), or when the loop's timer ends
the linger (``AuditLog.EMIT_LINGER_S``), or at a flush (from any thread) or close. Events from a
thread without a running loop are queued at once, as before.

The lists are keyed by loop and guarded by a lock, so a flush or close on another thread takes
every held event (and an emit after a close sees the log closed) and none is stranded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from gateway.audit.batch import Item


class HeldEmits:
    def __init__(self, linger_s: Callable[[], float], release: Callable[[list[Item]], None]) -> None:
        self._linger_s = linger_s
        self._release = release  # puts the events on the writer's queue, in order
        self._lock = threading.Lock()
        self._held: dict[asyncio.AbstractEventLoop, list[Item]] = {}
        # when each loop's held list started (time.monotonic): the linger runs from there
        self._since: dict[asyncio.AbstractEventLoop, float] = {}
        # each loop's linger timer and when it is due (time.monotonic). Left armed when the loop's
        # thread releases early: a call_later + cancel per call (two heap operations through
        # TimerHandle.__lt__, in Python) cost more than a timer every linger that finds nothing
        # or re-arms itself for the list held since (``_timed_out``)
        self._timers: dict[asyncio.AbstractEventLoop, tuple[asyncio.TimerHandle, float]] = {}
        self.closed = False

    def hold(self, loop: asyncio.AbstractEventLoop, item: Item) -> bool:
        """Hold ``item`` on ``loop`` (the running loop of this thread); False once closed."""
        with self._lock:
            if self.closed:
                return False
            held = self._held.get(loop)
            if held is not None:
                held.append(item)
                return True
            self._held[loop] = [item]
            self._since[loop] = now = time.monotonic()
        linger = self._linger_s()
        armed = self._timers.get(loop)
        if armed is None or armed[1] > now + linger:  # none, or due after this list's linger
            if armed is not None:
                armed[0].cancel()
            self._arm(loop, linger)
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """The loop's linger timer, due in ``delay`` seconds (on the loop's own thread). A loop
        seen for the first time drops what closed loops left (a timer is not cancelled when its
        list is released early, so a loop can close before it fires: not kept alive here)."""
        timer = (loop.call_later(delay, self._timed_out, loop), time.monotonic() + delay)
        with self._lock:
            if loop not in self._timers:
                for lp in [lp for lp in self._timers if lp.is_closed()]:
                    self._drop(lp)
            self._timers[loop] = timer

    def _drop(self, loop: asyncio.AbstractEventLoop) -> tuple[asyncio.TimerHandle, float] | None:
        """Forget a loop that stopped (under the lock); its timer, if any, for the caller to cancel."""
        self._since.pop(loop, None)
        return self._timers.pop(loop, None)

    def release_here(self) -> None:
        """Queue what this thread's running loop holds (before an event someone waits for), and
        what loops that no longer run still hold (``asyncio.run`` ended before their timer)."""
        if not self._held:
            return
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        with self._lock:
            loops = [lp for lp in self._held if lp is here or not lp.is_running()]
            taken = [self._held.pop(lp) for lp in loops]
            # this loop's timer stays armed (``_timed_out``); a stopped loop's is dropped
            dropped = [self._drop(lp) for lp in loops if lp is not here]
        for armed in dropped:
            if armed is not None:
                armed[0].cancel()
        for held in taken:
            self._release(held)

    def release_all(self) -> None:
        """Queue what every loop holds (before a flush: it promises every event emitted before it,
        on any thread). Queued under the lock, so a loop's next held list cannot go ahead of this
        one; its timer, left running, finds nothing or re-arms for the next list's linger."""
        with self._lock:
            taken, self._held = list(self._held.values()), {}
            for held in taken:
                self._release(held)

    def close(self) -> None:
        """Queue every held event (before the close marker); later holds are refused."""
        with self._lock:
            self.closed = True
            taken, self._held = list(self._held.values()), {}
        for held in taken:
            self._release(held)

    def _timed_out(self, loop: asyncio.AbstractEventLoop) -> None:
        """The linger timer: commit the list held for ``linger`` since it started; a list started
        after an early release re-arms the timer for the rest of its linger; nothing held, no timer."""
        with self._lock:
            self._timers.pop(loop, None)
            held = self._held.get(loop)
            if held is None:
                return
            wait = self._since.get(loop, 0.0) + self._linger_s() - time.monotonic()
            if wait <= 0:
                del self._held[loop]
        if wait > 0:
            self._arm(loop, wait)
            return
        if held:
            held[-1].urgent = True  # nothing awaited came: the writer commits them without lingering
            self._release(held)
