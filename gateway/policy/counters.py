"""Recent-call counters and the rate limiter: O(1) work per call, bounded memory.

The policy input carries ``calls_last_minute`` / ``calls_last_hour`` per principal and
``tool_calls_last_minute`` per principal+tool. Keeping one timestamp per call for an hour and
scanning it on every decision made each call slower the busier its principal was
(``reference/hot-path-profile.md``: 22 ms per call at 10^6 calls in the hour). Here:

- **Counters** are bucketed sliding windows (``SlidingCounter``): the minute window has 1 s
  buckets, the hour window 1 min buckets. A count is *conservative at the bucket's
  resolution*: it counts every call whose bucket is not older than the bucket holding
  ``now - window``, i.e. the exact count over ``(now - window, now]`` plus the calls of at most
  one extra resolution step (60..61 s for the minute, 60..61 min for the hour). It never
  undercounts, so a policy cap such as ``max_calls_per_hour`` is never exceeded. A call is
  counted when it is reserved, before its decision (``CallCounters.reserve``): calls whose
  decisions are awaited at once (a remote OPA) each read the ones reserved before them; one
  refused is taken back out of the bucket it was counted in (``release``).
- **The rate limiter** is exact: a log of the accepted calls of the last minute, capped at
  ``EXACT_LIMIT_MAX`` entries; a limit up to that cap admits exactly ``limit`` calls in any
  60 s window and refuses the next. A larger limit falls back to the conservative 1 s count
  (never more than ``limit`` in a window; may refuse up to 1 s early).
- **Memory**: 61 + 61 buckets per principal, 61 buckets + at most ``EXACT_LIMIT_MAX``
  timestamps per principal+tool. An entry is freed once its windows are empty (no call for
  an hour / a minute), swept a few entries at a time on each call (no timer, no full scan).

Every step that touches per-call state adds to ``ops`` so tests can assert constant work per
call by counting operations instead of timing them.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

MINUTE_RESOLUTION_S = 1.0
HOUR_RESOLUTION_S = 60.0
EXACT_LIMIT_MAX = 10_000
_SWEEP_PER_CALL = 2  # stale entries freed per call: amortises the cleanup, never a full scan


class SlidingCounter:
    """Calls in the last ``buckets * resolution`` seconds, counted per bucket (a ring).

    ``total`` covers ``buckets + 1`` buckets (the current one, partly elapsed, and ``buckets``
    whole ones before it), so the count is never below the exact one.
    """

    __slots__ = ("_counts", "_current", "_n", "_resolution", "ops", "total")

    def __init__(self, buckets: int, resolution: float) -> None:
        self._resolution = resolution
        self._n = buckets + 1
        self._counts = [0] * self._n
        self._current: int | None = None  # absolute index of the newest bucket
        self.total = 0
        self.ops = 0

    def _advance(self, idx: int) -> int:
        """Move the ring to bucket ``idx`` (absolute); the newest bucket's index after it."""
        if self._current is None:
            self._current = idx
            return idx
        steps = idx - self._current
        if steps <= 0:
            return self._current  # same bucket (or a clock that did not move forward)
        n = self._n
        if steps >= n:
            self.ops += 1
            self._counts = [0] * n
            self.total = 0
        else:
            self.ops += steps  # at most n: independent of how many calls are in the window
            for i in range(self._current + 1, idx + 1):
                slot = i % n
                self.total -= self._counts[slot]
                self._counts[slot] = 0
        self._current = idx
        return idx

    # add and count ask _advance only when the call is not in the newest bucket (most calls
    # are: many share a second), the same comparison it starts with
    def add(self, now: float) -> int:
        """Count one call at ``now``; the bucket it was counted in (``take_back`` takes it)."""
        idx = math.floor(now / self._resolution)
        current = self._current
        if idx != current:  # also when None: an int is never None
            current = self._advance(idx)
        self._counts[current % self._n] += 1
        self.total += 1
        self.ops += 1
        return current

    def holds(self, bucket: int) -> bool:
        """Whether ``bucket`` (absolute) is still in the ring, its calls still counted."""
        current = self._current
        return current is not None and current - self._n < bucket <= current

    def take_back(self, bucket: int) -> None:
        """Uncount one call ``add`` counted in ``bucket``. The bucket is named, not the time:
        a call is counted in the newest bucket when the clock stood still or went back. A
        bucket that has left the ring took its calls with it (nothing to take back): the
        slot now holds a newer bucket, someone else's calls."""
        if self.holds(bucket):
            slot = bucket % self._n
            if self._counts[slot] > 0:  # never below zero, whatever the caller repeats
                self._counts[slot] -= 1
                self.total -= 1
        self.ops += 1

    def count(self, now: float) -> int:
        idx = math.floor(now / self._resolution)
        if idx != self._current:
            self._advance(idx)
        return self.total

    def empty(self, now: float) -> bool:
        return self.count(now) == 0


class _PrincipalWindows:
    __slots__ = ("hour", "last", "minute")

    def __init__(self) -> None:
        self.minute = SlidingCounter(60, MINUTE_RESOLUTION_S)
        self.hour = SlidingCounter(60, HOUR_RESOLUTION_S)
        self.last = 0.0


class _ToolWindows:
    __slots__ = ("last", "log", "minute", "pops")

    def __init__(self) -> None:
        self.minute = SlidingCounter(60, MINUTE_RESOLUTION_S)
        self.log: deque[float] = deque(maxlen=EXACT_LIMIT_MAX)  # accepted calls, oldest first
        self.last = 0.0
        self.pops = 0

    def prune(self, now: float) -> None:
        horizon = now - 60.0
        log = self.log
        while log and log[0] <= horizon:
            log.popleft()
            self.pops += 1

    def admits(self, now: float, limit: int | None, reserved: int | None = None) -> bool:
        """Whether one more call is under ``limit``; ``reserved``: the bucket of ``minute``
        where the call itself was counted at its reservation (not a call before it)."""
        log = self.log
        if log and log[0] <= now - 60.0:  # prune's first test, without the call when nothing is due
            self.prune(now)
        if limit is None:
            return True
        if limit <= EXACT_LIMIT_MAX:
            return len(self.log) < limit
        before = self.minute.count(now)
        if reserved is not None and self.minute.holds(reserved):
            before -= 1
        return before < limit


class RecentCounts(Protocol):
    """What the policy input reads: this process's ``CallCounters``, or the counts replicas
    share on Redis (``gateway.state.limiter.SharedCounts``)."""

    def principal_counts(self, principal: str) -> tuple[int, int]: ...
    def tool_count(self, principal: str, tool: str) -> int: ...


class CallCounters:
    """Recent-call windows per principal (1 min, 1 h) and per principal+tool (1 min).

    Thread-safe. ``try_acquire`` is the rate limiter: it records a call only if the
    principal+tool window is below the limit. A call whose decision is awaited is counted in
    two parts instead: ``reserve`` (the windows, before the decision), then ``admit`` (the
    rate limiter's log) or ``release`` (the windows' count taken back). ``clock`` is
    injectable (tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # least recently used first: the sweep only ever looks at the front
        self._by_principal: OrderedDict[str, _PrincipalWindows] = OrderedDict()
        self._by_tool: OrderedDict[tuple[str, str], _ToolWindows] = OrderedDict()
        self._sweep_ops = 0

    def principal_counts(self, principal: str) -> tuple[int, int]:
        """(calls in the last minute, calls in the last hour) by ``principal``."""
        now = self._clock()
        with self._lock:
            w = self._by_principal.get(principal)
            if w is None:
                return 0, 0
            return w.minute.count(now), w.hour.count(now)

    def tool_count(self, principal: str, tool: str) -> int:
        """Calls of ``tool`` by ``principal`` in the last minute."""
        now = self._clock()
        with self._lock:
            w = self._by_tool.get((principal, tool))
            return 0 if w is None else w.minute.count(now)

    def try_acquire(self, principal: str, tool: str, limit_per_minute: int | None) -> bool:
        """Record one call unless it would exceed ``limit_per_minute`` (None: no limit)."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            key = (principal, tool)
            tw = self._tool_windows(key, now)
            if not tw.admits(now, limit_per_minute):
                return False
            tw.log.append(now)
            tw.minute.add(now)
            self._touch_tool(key, tw, now)
            pw = self._principal_windows(principal, now)
            pw.minute.add(now)
            pw.hour.add(now)
            return True

    def reserve(self, principal: str, tool: str) -> tuple[int, int, int, int, int, int]:
        """Count one call now, before its decision, so a call reserved while this one's decision
        is awaited (a remote OPA) reads it: (calls in the last minute, calls in the last hour,
        calls of ``tool`` in the last minute) before it, then the buckets it was counted in
        (principal minute, principal hour, tool minute) for ``admit`` and ``release``. The
        rate limiter's log is not touched: ``admit`` records the call there."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            key = (principal, tool)
            tw = self._tool_windows(key, now)
            self._touch_tool(key, tw, now)
            pw = self._principal_windows(principal, now)
            t = tw.minute.add(now)
            m = pw.minute.add(now)
            h = pw.hour.add(now)
            # the totals less the call itself: what a count read just before it would say
            return pw.minute.total - 1, pw.hour.total - 1, tw.minute.total - 1, m, h, t

    def admit(self, principal: str, tool: str, limit_per_minute: int | None, tool_bucket: int) -> bool:
        """A reserved call, recorded in the rate limiter's log unless ``limit_per_minute``
        calls are there already; its windows already count it (``tool_bucket``: where
        ``reserve`` counted it in the tool's minute). A call refused must be released."""
        now = self._clock()
        with self._lock:
            key = (principal, tool)
            tw = self._tool_windows(key, now)  # new if swept while its decision was awaited (> 1 min)
            if not tw.admits(now, limit_per_minute, tool_bucket):
                return False
            tw.log.append(now)
            self._touch_tool(key, tw, now)
            return True

    def _tool_windows(self, key: tuple[str, str], now: float) -> _ToolWindows:
        """``key``'s windows, made (as of ``now``) on its first call."""
        tw = self._by_tool.get(key)
        if tw is None:
            tw = self._by_tool[key] = _ToolWindows()
            tw.last = now
        return tw

    def _touch_tool(self, key: tuple[str, str], tw: _ToolWindows, now: float) -> None:
        """``tw`` used at ``now``: the newest, the last the sweep reaches."""
        tw.last = now
        self._by_tool.move_to_end(key)

    def _principal_windows(self, principal: str, now: float) -> _PrincipalWindows:
        """``principal``'s windows (made on its first call), used at ``now``."""
        pw = self._by_principal.get(principal)
        if pw is None:
            pw = self._by_principal[principal] = _PrincipalWindows()
        pw.last = now
        self._by_principal.move_to_end(principal)
        return pw

    def release(self, principal: str, tool: str, buckets: tuple[int, int, int]) -> None:
        """Uncount a reserved call that was not admitted (``reserve``'s buckets): exactly the
        one it counted, or nothing where its bucket has left the window since."""
        m, h, t = buckets
        with self._lock:
            pw = self._by_principal.get(principal)
            if pw is not None:
                pw.minute.take_back(m)
                pw.hour.take_back(h)
            tw = self._by_tool.get((principal, tool))
            if tw is not None:
                tw.minute.take_back(t)

    def _sweep(self, now: float) -> None:
        # An entry whose newest call is older than its longest window (+ one bucket) counts 0
        # everywhere: dropping it changes no answer. The stale entries, if any, are at the
        # front (least recently used first): up to _SWEEP_PER_CALL of them are counted by
        # walking the front, then popped from it.
        stale = 0
        for tw in self._by_tool.values():
            if stale == _SWEEP_PER_CALL or now - tw.last <= 60.0 + MINUTE_RESOLUTION_S:
                break
            stale += 1
        for _ in range(stale):
            self._by_tool.popitem(last=False)
        self._sweep_ops += stale
        stale = 0
        for pw in self._by_principal.values():
            if stale == _SWEEP_PER_CALL or now - pw.last <= 3600.0 + HOUR_RESOLUTION_S:
                break
            stale += 1
        for _ in range(stale):
            self._by_principal.popitem(last=False)
        self._sweep_ops += stale

    def sizes(self) -> dict[str, int]:
        """How many entries are held (the bounded-state tests count these)."""
        with self._lock:
            return {"principals": len(self._by_principal), "principal_tools": len(self._by_tool)}

    def ops(self) -> int:
        """Total work done so far, in bucket steps, log pops and sweep steps (tests)."""
        with self._lock:
            total = self._sweep_ops
            for pw in self._by_principal.values():
                total += pw.minute.ops + pw.hour.ops
            for tw in self._by_tool.values():
                total += tw.minute.ops + tw.pops
            return total
