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
from collections.abc import Callable

from gateway.audit.batch import Item


class HeldEmits:
    def __init__(self, linger_s: Callable[[], float], release: Callable[[list[Item]], None]) -> None:
        self._linger_s = linger_s
        self._release = release  # puts the events on the writer's queue, in order
        self._lock = threading.Lock()
        self._held: dict[asyncio.AbstractEventLoop, list[Item]] = {}
        # each loop's linger timer, cancelled when its thread releases early (no wake-up for nothing)
        self._timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
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
        self._timers[loop] = loop.call_later(self._linger_s(), self._timed_out, loop)
        return True

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
        for lp in loops:  # on its own thread, or a loop that no longer runs
            timer = self._timers.pop(lp, None)
            if timer is not None:
                timer.cancel()
        for held in taken:
            self._release(held)

    def release_all(self) -> None:
        """Queue what every loop holds (before a flush: it promises every event emitted before it,
        on any thread). Queued under the lock, so a loop's next held list cannot go ahead of this
        one; its timer, left running, finds nothing or ends the next list's linger early."""
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
        self._timers.pop(loop, None)
        with self._lock:
            held = self._held.pop(loop, None)
        if held:
            held[-1].urgent = True  # nothing awaited came: the writer commits them without lingering
            self._release(held)
