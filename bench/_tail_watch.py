"""bench/chain_ops.py's ``--front --tail`` mode: the timeline of what runs beside the calls in
the counted ``symbi mcp`` process (``TailWatch``) and its reader (``tail_tables``).

Loaded by its path (``bench/_sibling.py``), like bench/_chain_ops_front.py, and for the same
reason: the standard library only, so it loads beside any checkout's gateway.
"""

from __future__ import annotations

import collections
import gc
import sys
import threading
import time
from typing import Any


def short(path: str) -> str:
    """``path`` as the tables print it: from its package (``gateway/...``), else whole."""
    for marker in ("site-packages/", "/gateway/", "python3.11/", "python3.12/"):
        if marker in path:
            return ("gateway/" if marker == "/gateway/" else "") + path.split(marker, 1)[1]
    return path


class TailWatch:
    """What runs beside the calls, as a timeline (``time.monotonic_ns``: the same clock in every
    process of this machine, so the client's call times line up with it): the collector's runs,
    event-loop callbacks longer than ``slow_ns`` (by the task's coroutine or the callback's
    name), and the audit writer's commits, WAL checkpoints, head seals and checkpoint files.
    The audit hooks wrap the methods by name and are skipped on a checkout that lacks them."""

    def __init__(self, slow_ns: int = 500_000) -> None:
        self.slow_ns = slow_ns
        self.events: list[tuple[str, int, int, str]] = []  # kind, start, end, detail
        self._gc_began = 0
        self._undo: list[tuple[object, str, object]] = []
        # the callback running on the loop's thread (its start), and the stacks a watchdog
        # thread took of it while it ran past ``stack_after_ns`` (what a long step was doing)
        self._running = 0
        self.stack_after_ns = 4_000_000
        self.stacks: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        # thread CPU of a few functions inside the running callback, shown with a slow one
        self._inside: collections.Counter[str] = collections.Counter()

    def begin(self) -> None:
        import asyncio.events

        gc.callbacks.append(self._gc)
        self._wrap_loop(asyncio.events.Handle)
        threading.Thread(target=self._watch, args=(threading.get_ident(),), daemon=True).start()
        import asyncio.unix_events

        pipe: Any = getattr(asyncio.unix_events, "_UnixWritePipeTransport")  # noqa: B009 - private, untyped
        self._time_inside(pipe, "write", "pipe write")
        try:
            from gateway.policy.engine import EmbeddedEngine
        except ImportError:
            pass
        else:
            self._time_inside(EmbeddedEngine, "decide", "policy")
        try:
            from gateway.audit import checkpoints, writer
        except ImportError:
            return
        self._wrap(writer.Writer, "commit_events", "audit:commit", lambda obj, args: f"{len(args[0])} events")
        self._wrap(
            writer.Writer,
            "_checkpoint_wal",
            "audit:wal_checkpoint",
            lambda obj, args: "" if obj.wal_pages >= obj.wal_checkpoint_pages else None,
        )
        self._wrap(
            writer.Writer,
            "seal",
            "audit:seal",
            lambda obj, args: "" if obj.pending is not None or obj.unsigned_head else None,
        )
        self._wrap(checkpoints, "write_files", "audit:checkpoint_file", lambda obj, args: "")

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic_ns()
        if phase == "start":
            self._gc_began = now
        else:
            self.events.append((f"gc:gen{info['generation']}", self._gc_began, now, str(info["collected"])))

    def _wrap_loop(self, handle: Any) -> None:
        run = handle._run
        slow, events = self.slow_ns, self.events

        def _run(h: Any) -> None:
            c0, t0 = time.thread_time_ns(), time.monotonic_ns()
            self._running = t0
            self._inside.clear()
            run(h)
            self._running = 0
            t1 = time.monotonic_ns()
            if t1 - t0 >= slow:  # its CPU time beside it: the rest of the wall time is the run queue
                cpu = (time.thread_time_ns() - c0) / 1e6
                inside = "".join(f", {k} {v / 1e6:.2f}" for k, v in self._inside.items())
                events.append(
                    ("loop:slow_callback", t0, t1, f"{_callback_name(h)} (cpu {cpu:.2f} ms{inside})")
                )

        handle._run = _run
        self._undo.append((handle, "_run", run))

    def _time_inside(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        inside = self._inside

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.thread_time_ns()
            try:
                return original(*args, **kwargs)
            finally:
                inside[label] += time.thread_time_ns() - c0

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def _watch(self, loop_thread: int) -> None:
        """Every 3 ms: the loop thread's stack while one callback runs past ``stack_after_ns``
        (the gateway's and libraries' frames, innermost last), counted by stack."""
        seen = 0
        while not self._stop.wait(0.003):
            began = self._running
            if not began or time.monotonic_ns() - began < self.stack_after_ns or began == seen:
                continue
            seen = began  # one stack per long callback: they are not weighted by their length
            frame = sys._current_frames().get(loop_thread)
            parts = []
            while frame is not None:
                parts.append(
                    f"{frame.f_code.co_qualname} ({short(frame.f_code.co_filename)}:{frame.f_lineno})"
                )
                frame = frame.f_back
            self.stacks[" <- ".join(parts[:14])] += 1

    def _wrap(self, owner: Any, name: str, kind: str, detail: Any) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return
        events = self.events
        is_class = isinstance(owner, type)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            what = detail(args[0], args[1:]) if is_class else detail(None, args)
            t0 = time.monotonic_ns()
            try:
                return original(*args, **kwargs)
            finally:
                if what is not None:
                    events.append((kind, t0, time.monotonic_ns(), what))

        setattr(owner, name, wrapped)
        self._undo.append((owner, name, original))

    def report(self) -> dict[str, Any]:
        gc.callbacks.remove(self._gc)
        self._stop.set()
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        return {
            "events": [list(e) for e in self.events],
            "long_callback_stacks": dict(self.stacks.most_common(20)),
        }


def _callback_name(handle: Any) -> str:
    """A slow callback by what it ran: a task's coroutine, else the callback's qualified name."""
    cb = getattr(handle, "_callback", None)
    task = getattr(cb, "__self__", None)
    get_coro = getattr(task, "get_coro", None)
    if get_coro is not None:
        coro = get_coro()
        return f"task {getattr(coro, '__qualname__', type(coro).__qualname__)}"
    return str(getattr(cb, "__qualname__", type(cb).__qualname__))


def tail_tables(calls: list[tuple[int, int]], events: list[list[Any]], slowest: int = 12) -> dict[str, Any]:
    """The calls' latencies (client side) against ``TailWatch``'s timeline: for each kind of
    event, how often it ran (per 1,000 calls), how long (ms), and the share of all calls and of
    the slowest 1 % that it overlapped (a kind behind the tail overlaps far more of the slow
    calls than of all); then the slowest calls with what overlapped each."""
    lat = sorted((b - a) / 1e6 for a, b in calls)
    n = len(lat)

    def q(p: float) -> float:
        return round(lat[min(n - 1, int(p * n))], 3)

    # the slowest 1 % by rank (at least one call): ties at a threshold would take in more
    slow = set(sorted(range(n), key=lambda i: calls[i][0] - calls[i][1])[: max(1, n // 100)])
    ordered = sorted(events, key=lambda e: e[1])
    starts = [e[1] for e in ordered]
    longest = max((e[2] - e[1] for e in ordered), default=0)

    def overlapping(a: int, b: int) -> list[list[Any]]:
        import bisect

        lo = bisect.bisect_left(starts, a - longest)
        hi = bisect.bisect_right(starts, b)
        return [e for e in ordered[lo:hi] if e[2] > a and e[1] < b]

    kinds: dict[str, dict[str, Any]] = {}
    for e in ordered:
        k = kinds.setdefault(e[0], {"n": 0, "ms": []})
        k["n"] += 1
        k["ms"].append((e[2] - e[1]) / 1e6)
    hit_all: collections.Counter[str] = collections.Counter()
    hit_slow: collections.Counter[str] = collections.Counter()
    rows = []
    for i, (a, b) in enumerate(calls):
        over = overlapping(a, b)
        names = {e[0] for e in over}
        hit_all.update(names)
        if i in slow:
            hit_slow.update(names)
        rows.append(((b - a) / 1e6, over, a))
    rows.sort(key=lambda r: -r[0])
    # the callbacks that took the most CPU (not the run queue): the loop's own long steps
    busiest = sorted(
        (e for e in ordered if e[0] == "loop:slow_callback"),
        key=lambda e: -float(e[3].rsplit("(cpu ", 1)[-1].split()[0].rstrip(",")),
    )
    by_kind = {}
    for name, k in sorted(kinds.items(), key=lambda kv: -kv[1]["n"]):
        ms = sorted(k["ms"])
        by_kind[name] = {
            "per_1000_calls": round(1000 * k["n"] / n, 2),
            "ms_median": round(ms[len(ms) // 2], 3),
            "ms_max": round(ms[-1], 3),
            "ms_total_per_1000_calls": round(1000 * sum(ms) / n, 2),
            "share_of_calls_overlapped": round(hit_all[name] / n, 3),
            "share_of_slowest_1pct_overlapped": round(hit_slow[name] / len(slow), 3),
        }
    return {
        "calls": n,
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(lat[-1], 3)},
        "slowest_1pct_calls": len(slow),
        "by_kind": by_kind,
        "most_cpu_callbacks": [f"{e[3]} {(e[2] - e[1]) / 1e6:.2f} ms" for e in busiest[:slowest]],
        "slowest": [
            {
                "ms": round(ms, 3),
                "overlapped": [
                    f"{e[0]} {e[3]} {(e[2] - e[1]) / 1e6:.2f} ms (from {(e[1] - a) / 1e6:+.2f})".replace(
                        "  ", " "
                    )
                    for e in over
                ],
            }
            for ms, over, a in rows[:slowest]
        ],
    }
