"""``RefusalTally``: past a few refused calls per principal and window, count them instead of
writing a record each.

A refused call (outcome ``denied``: policy, unknown tool, verification, suspended agent, rate
limit...) has no side effect upstream, yet each one was a signed, durable record: a client
sending nothing but refusals grew the log without bound and took the writer's throughput
(red team 28). So did a refused request's event (``gateway.events.REFUSAL_EVENTS``: a
denied subscription, an unknown URI, a non-admin's status read, a bus or memory denial),
counted here the same way, in the same budget (``AuditLog.emit``; ``event_key``).

Within a window of ``window_s`` seconds (starting at the principal's first refusal) the first
``per_window`` refusals of a principal are still recorded one by one; the rest are counted here, by (agent, event type, error code, target), and one
``audit.refusals_summarized`` event per principal carries the counts when the window ends, on
a flush and on close (``AuditLog.summarize_refusals``). Every refusal is thus in the signed
chain, one by one or as a count, and a flood adds O(1) records per principal and window.

Memory is bounded too: at most ``max_keys`` distinct keys per principal (the rest share one
``other`` bucket), ``SAMPLES`` call ids per key, targets cut to ``TARGET_CHARS``, and at most
``max_principals`` principals tracked at once (a refusal of one more is recorded one by one).
What is counted and not yet written is lost if the process dies: at most one window's worth
per principal.

Pure bookkeeping (no I/O), safe from any thread: the audit step admits from the event loop,
a flush or close takes from the caller's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 3  # call ids kept per key: enough to find examples in the client's own logs
TARGET_CHARS = 128  # a target is the caller's text (an unknown tool's name): its start only
MAX_KEYS = 32  # distinct keys per principal and window; the rest go to the "other" bucket
MAX_PRINCIPALS = 4096  # principals with a window open at once; one more is recorded one by one


@dataclass(frozen=True, slots=True)
class RefusalKey:
    """What a counted refusal is counted under."""

    agent: str | None
    event_type: str
    error_code: str | None
    target: str | None


OTHER = RefusalKey(None, "", None, None)  # past max_keys: kinds no longer told apart


@dataclass(slots=True)
class _Count:
    first_ns: int
    last_ns: int
    count: int = 0
    call_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Window:
    started: float  # the tally's clock, for the window's end
    started_ns: int  # wall time, for the record
    recorded: int = 0  # refusals recorded one by one in this window
    counts: dict[RefusalKey, _Count] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RefusalSummary:
    """One ``audit.refusals_summarized`` event: a principal's counted refusals."""

    principal: str
    details: dict[str, Any]


class RefusalTally:
    """Which refused calls are recorded one by one, and the counts of the others."""

    def __init__(
        self,
        per_window: int,
        window_s: float,
        *,
        max_keys: int = MAX_KEYS,
        max_principals: int = MAX_PRINCIPALS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = max(1, int(per_window))
        self.window_s = float(window_s)
        self.max_keys = max(1, int(max_keys))
        self.max_principals = max(1, int(max_principals))
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}

    def admit(
        self, principal: str, key: RefusalKey, call_id: str | None
    ) -> tuple[bool, list[RefusalSummary]]:
        """One refused call or request (``call_id`` None: a request has none): whether to record
        it one by one (else it is counted here), and the summary of the principal's previous
        window if that ended (to be written first)."""
        now = self._clock()
        with self._lock:
            ended: list[RefusalSummary] = []
            w = self._windows.get(principal)
            if w is not None and now - w.started >= self.window_s:
                ended = self._end(principal, w)
                w = None
            if w is None:
                if len(self._windows) >= self.max_principals:
                    return True, ended  # no memory for one more: the record is the fallback
                w = self._windows[principal] = _Window(now, time.time_ns())
            if w.recorded < self.per_window:
                w.recorded += 1
                return True, ended
            self._count(w, key, call_id)
            return False, ended

    def take(self, *, every: bool = False) -> list[RefusalSummary]:
        """The summaries due: of the windows that ended (they are forgotten), and with ``every``
        (a flush, a close) of the others' counts so far too (their windows and record budgets
        go on)."""
        now = self._clock()
        with self._lock:
            out: list[RefusalSummary] = []
            for principal, w in list(self._windows.items()):
                if now - w.started >= self.window_s:
                    out += self._end(principal, w)
                elif every and w.counts:
                    out.append(self._summary(principal, w, ended=False))
                    w.counts = {}
            return out

    def pending(self) -> int:
        """Refusals counted and not yet summarized."""
        with self._lock:
            return sum(c.count for w in self._windows.values() for c in w.counts.values())

    # -- under the lock -----------------------------------------------------------------------

    def _end(self, principal: str, w: _Window) -> list[RefusalSummary]:
        del self._windows[principal]
        return [self._summary(principal, w, ended=True)] if w.counts else []

    def _count(self, w: _Window, key: RefusalKey, call_id: str | None) -> None:
        if key.target is not None and len(key.target) > TARGET_CHARS:
            key = RefusalKey(key.agent, key.event_type, key.error_code, key.target[:TARGET_CHARS])
        if key not in w.counts and len(w.counts) >= self.max_keys:
            key = OTHER
        now_ns = time.time_ns()
        c = w.counts.get(key)
        if c is None:
            c = w.counts[key] = _Count(now_ns, now_ns)
        c.count += 1
        c.last_ns = now_ns
        if call_id is not None and len(c.call_ids) < SAMPLES:
            c.call_ids.append(call_id)

    def _summary(self, principal: str, w: _Window, *, ended: bool) -> RefusalSummary:
        counts = [_entry(k, c) for k, c in w.counts.items()]
        details: dict[str, Any] = {
            "window_started_ns": w.started_ns,
            "window_s": self.window_s,
            "window_ended": ended,  # False: written early (a flush or close), the window goes on
            "recorded_per_window": self.per_window,
            "recorded": w.recorded,  # this window's refusals recorded one by one so far
            "summarized": sum(c.count for c in w.counts.values()),
            "first_ns": min(c.first_ns for c in w.counts.values()),
            "last_ns": max(c.last_ns for c in w.counts.values()),
            "counts": counts,
        }
        return RefusalSummary(principal, details)


def event_key(event_type: str, details: Mapping[str, Any], agent: str | None) -> RefusalKey:
    """What a refused request's event (``gateway.events.REFUSAL_EVENTS``) is counted under:
    its error code (else its method or kind) and its target (else its tool, URI or topic)."""
    code = details.get("error_code") or details.get("method") or details.get("kind")
    target = details.get("target") or details.get("tool") or details.get("uri") or details.get("topic")
    return RefusalKey(
        agent, event_type, None if code is None else str(code), None if target is None else str(target)
    )


def _entry(key: RefusalKey, c: _Count) -> dict[str, Any]:
    base: dict[str, Any] = (
        {"other": True}
        if key == OTHER
        else {
            "agent": key.agent,
            "event_type": key.event_type,
            "error_code": key.error_code,
            "target": key.target,
        }
    )
    return {
        **base,
        "count": c.count,
        "first_ns": c.first_ns,
        "last_ns": c.last_ns,
        "call_ids": list(c.call_ids),
    }
