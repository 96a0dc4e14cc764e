"""Benchmark: the policy's recent-call counters per call, against history size.

One command, JSON on stdout:

    .venv/bin/python bench/counters.py [--histories 1000,10000,100000,1000000] [--calls 2000]

For each history size H (calls by one principal spread over the last hour, injected clock),
the time of one call's counter work (``try_acquire`` + ``principal_counts`` + ``tool_count``,
what the policy step does per call) with ``gateway.policy.counters.CallCounters`` against the
baseline measured in the same run: the exact scan the gateway used before (one timestamp per
call for an hour, the minute counted by scanning the hour).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gateway.policy.counters import CallCounters


class ScanCounters:
    """The previous implementation (for the baseline): deques of call times, scanned per call."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._p: dict[str, deque[float]] = {}
        self._t: dict[tuple[str, str], deque[float]] = {}

    def principal_counts(self, p: str) -> tuple[int, int]:
        now, q = self._clock(), self._p.get(p)
        if not q:
            return 0, 0
        while q and q[0] <= now - 3600:
            q.popleft()
        return sum(1 for t in q if t > now - 60), len(q)

    def tool_count(self, p: str, tool: str) -> int:
        now, q = self._clock(), self._t.get((p, tool))
        if not q:
            return 0
        while q and q[0] <= now - 60:
            q.popleft()
        return len(q)

    def try_acquire(self, p: str, tool: str, limit: int | None) -> bool:
        now = self._clock()
        tq = self._t.setdefault((p, tool), deque())
        while tq and tq[0] <= now - 60:
            tq.popleft()
        if limit is not None and len(tq) >= limit:
            return False
        tq.append(now)
        self._p.setdefault(p, deque()).append(now)
        return True


def per_call_us(make: Callable[[Callable[[], float]], Any], history: int, calls: int) -> float:
    now = [0.0]
    c = make(lambda: now[0])
    step = 3600.0 / history
    for _ in range(history):
        c.try_acquire("busy", "fs__read", None)
        now[0] += step
    t0 = time.perf_counter()
    for _ in range(calls):
        c.principal_counts("busy")
        c.tool_count("busy", "fs__read")
        c.try_acquire("busy", "fs__read", None)
        now[0] += step
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--histories", default="1000,10000,100000,1000000")
    ap.add_argument("--calls", type=int, default=2000, help="timed calls per measurement")
    args = ap.parse_args()
    rows = []
    for h in (int(x) for x in args.histories.split(",")):
        calls = args.calls if h < 100_000 else max(50, args.calls // 20)  # the scan is slow by design
        bucketed = per_call_us(CallCounters, h, args.calls)
        scan = per_call_us(ScanCounters, h, calls)
        rows.append(
            {
                "history": h,
                "bucketed_us_per_call": round(bucketed, 2),
                "scan_us_per_call": round(scan, 2),
                "speedup": round(scan / bucketed, 1),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "counters", "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
