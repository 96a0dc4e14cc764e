"""bench/chain_ops.py's ``--front`` modes: what runs in the counted ``symbi mcp`` process (the
call counter, the collector's watch, cProfile, callgrind's marks: ``serve_counted``) and the
readers of what cProfile, strace and callgrind wrote.

chain_ops.py loads this file by its path, not by import: ``PYTHONPATH`` names the checkout whose
gateway is counted, and that checkout's bench/ may not have this file. The standard library
only, so it loads beside any checkout's gateway.
"""

from __future__ import annotations

import collections
import cProfile
import gc
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Self

# the tail mode's file beside this one, by its path (bench/_sibling.py): this file is loaded so too
if TYPE_CHECKING:
    from bench._tail_watch import TailWatch, short
else:
    import runpy

    _tail = runpy.run_path(str(Path(__file__).with_name("_sibling.py")))["sibling"]("_tail_watch")
    TailWatch, short = _tail.TailWatch, _tail.short


# the gateway's frames under every event-loop callback (the process's main function)
_OUTER = frozenset({"run_stdio", "serve_stdio", "_mcp", "main", "serve_counted"})


class FrontCounter:
    """Every call on the ``symbi mcp`` process's event-loop thread, by the innermost gateway
    module on its stack (else the package of the outermost caller that is not asyncio's)."""

    def __init__(self) -> None:
        self.total = 0
        self.loops = 0
        self.areas: collections.Counter[str] = collections.Counter()
        self.top: collections.Counter[str] = collections.Counter()
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.functions: collections.Counter[str] = collections.Counter()
        self.inside: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            where = f"{frame.f_code.co_qualname} ({short(frame.f_code.co_filename)})"
            if frame.f_code.co_name == "_run_once":
                self.loops += 1
            up: FrameType | None = frame.f_back  # a call's frame is the callee's: start at its caller
        elif event == "c_call":
            where = f"{getattr(arg, '__qualname__', repr(arg))} (C)"
            up = frame
        else:
            return
        self.total += 1
        self.top[where] += 1
        area = None
        seen: set[Any] = set()
        while up is not None:
            code = up.f_code
            if "/gateway/" in code.co_filename and code not in seen and code.co_name not in _OUTER:
                seen.add(code)
                self.inclusive[f"{code.co_qualname} ({short(code.co_filename)})"] += 1
                if area is None:
                    area = short(code.co_filename)
                    function = f"{code.co_qualname} ({area})"
                    self.functions[function] += 1
                    self.inside[function][where] += 1
            up = up.f_back
        self.areas[area or "outside the gateway (event loop, SDK tasks)"] += 1

    def report(self, calls: int, top: int) -> dict[str, Any]:
        return {
            "function_calls": round(self.total / calls, 1),
            "loop_iterations": round(self.loops / calls, 2),
            "by_area": {k: round(v / calls, 1) for k, v in self.areas.most_common()},
            "top": {k: round(v / calls, 2) for k, v in self.top.most_common(4 * top)},
            "gateway_inclusive": {k: round(v / calls, 1) for k, v in self.inclusive.most_common(4 * top)},
            "by_function": {k: round(v / calls, 1) for k, v in self.functions.most_common(4 * top)},
            "by_function_top": {
                k: {f: round(n / calls, 2) for f, n in self.inside[k].most_common(top)}
                for k, _ in self.functions.most_common(top)
            },
        }


class GcWatch:
    """The garbage collector's runs while counting (``gc.callbacks``, every thread): how many
    per generation, their pauses (CPU time of the thread that collects: the wall clock of a
    shared machine would add its queue), what they freed; no profiler runs beside it."""

    def __init__(self) -> None:
        self.runs: dict[int, list[float]] = collections.defaultdict(list)
        self.collected = 0
        self._began = 0.0
        self.before: collections.Counter[str] = collections.Counter()
        self.stats_before: list[dict[str, int]] = []

    @staticmethod
    def kinds(objects: list[Any]) -> collections.Counter[str]:
        return collections.Counter(type(o).__qualname__ for o in objects)

    def begin(self) -> None:
        # no collection here: it would reset the count that decides the next full one
        self.before = self.kinds(gc.get_objects())
        self.stats_before = gc.get_stats()
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.thread_time()
        else:
            self.runs[info["generation"]].append(time.thread_time() - self._began)
            self.collected += info["collected"]

    def report(self, top: int = 12) -> dict[str, Any]:
        """What ran, then what the calls left: objects kept (by type, against ``begin``'s
        count) and the cyclic garbage a full collection finds now (by type)."""
        gc.callbacks.remove(self)
        pauses = sorted(p for runs in self.runs.values() for p in runs)
        stats = gc.get_stats()
        grown = self.kinds(gc.get_objects())
        grown.subtract(self.before)
        gc.set_debug(gc.DEBUG_SAVEALL)
        full = time.thread_time()
        gc.collect()
        full = time.thread_time() - full
        # a function in a cycle by its name: the closure that makes the cycle
        garbage = collections.Counter(
            f"function {o.__qualname__} ({short(o.__code__.co_filename)})"
            if callable(o) and hasattr(o, "__code__")
            else type(o).__qualname__
            for o in gc.garbage
        )
        gc.set_debug(0)
        gc.garbage.clear()
        return {
            "full_collection_cpu_ms": round(full * 1e3, 2),
            "kept_by_type": dict(grown.most_common(top)),
            "cyclic_garbage_by_type": dict(garbage.most_common(top)),
            "collections": {str(g): len(self.runs[g]) for g in (0, 1, 2)},
            "pause_cpu_ms_total": {str(g): round(sum(self.runs[g]) * 1e3, 3) for g in (0, 1, 2)},
            "pause_cpu_ms_max": {str(g): round(max(self.runs[g], default=0.0) * 1e3, 3) for g in (0, 1, 2)},
            "pauses_over_1ms": sum(p > 1e-3 for p in pauses),
            "collected": self.collected,
            "threshold": list(gc.get_threshold()),
            "freeze_count": gc.get_freeze_count(),
            "collections_before_counting": [s["collections"] for s in self.stats_before],
            "collections_at_the_end": [s["collections"] for s in stats],
            "tracked_objects": len(gc.get_objects()),
        }


def serve_counted(
    out: str,
    argv: list[str],
    cprofile: bool = False,
    gc_only: bool = False,
    marks: bool = False,
    tail: bool = False,
    tail_slow_us: int = 500,
) -> None:
    """``symbi`` with ``argv`` in this process; SIGUSR1 starts counting the event-loop thread's
    calls, SIGUSR2 stops and writes the counts to ``out`` (raw; ``--front`` divides).
    ``cprofile``: cProfile's statistics instead (``out`` + ``.pstats``), and its tables.
    ``gc_only``: the garbage collector's runs instead (``GcWatch``). ``marks``: each signal
    only calls ``getppid`` (callgrind, run with ``--dump-before=getppid``, dumps its counters
    there: the window between the two dumps is the calls). ``tail``: the timeline of what ran
    beside the calls instead (``TailWatch``; event-loop callbacks from ``tail_slow_us`` long)."""
    from gateway.cli import main as symbi

    counter = FrontCounter()
    # the thread's CPU time, not the wall clock: a pipe write that wakes the peer is not ours
    profile = cProfile.Profile(time.thread_time_ns, 1e-9) if cprofile else None
    watch = GcWatch()
    timeline = TailWatch(tail_slow_us * 1000)

    def start(signum: int, frame: object) -> None:
        if marks:
            os.getppid()
        elif gc_only:
            watch.begin()
        elif tail:
            timeline.begin()
        elif profile is not None:
            profile.enable()
        else:
            sys.setprofile(counter)

    def stop(signum: int, frame: object) -> None:
        if marks:
            os.getppid()
            Path(out).write_text(json.dumps({"marked": True}))
            return
        if gc_only:
            Path(out).write_text(json.dumps({"gc": watch.report()}))
            return
        if tail:
            Path(out).write_text(json.dumps(timeline.report()))
            return
        if profile is not None:
            profile.disable()
            profile.dump_stats(out + ".pstats")
            Path(out).write_text(json.dumps({"profiled": True}))
            return
        sys.setprofile(None)
        Path(out).write_text(json.dumps(counter.report(1, 40)))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.exit(symbi(argv))


def profile_tables(path: str, calls: int, top: int) -> dict[str, Any]:
    """cProfile's top functions per call, by own CPU time (µs of the thread's CPU, inflated by
    the profiler: compare within one run) and by number of calls."""
    stats = pstats.Stats(path)
    rows = []
    # typeshed does not declare Stats.stats, cProfile's raw table
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            (f"{name} ({short(file)}:{line})", ncalls / calls, tottime * 1e6 / calls, cumtime * 1e6 / calls)
        )
    by_time = sorted(rows, key=lambda r: -r[2])[: 2 * top]
    by_calls = sorted(rows, key=lambda r: -r[1])[: 2 * top]
    return {
        "profiled_us_per_call": round(sum(r[2] for r in rows), 1),
        "by_tottime_us": {r[0]: [round(r[2], 2), round(r[1], 2)] for r in by_time},
        "by_ncalls": {r[0]: [round(r[1], 2), round(r[2], 2)] for r in by_calls},
    }


class Strace:
    """``strace -c -f`` attached to the gateway process (all its threads, not the upstream's
    process, started before) while the block runs: system calls by name."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(self.pid), "-o", str(self.out)])
        for _ in range(200):  # attached: the main thread says who traces it
            status = Path(f"/proc/{self.pid}/status").read_text()
            if "TracerPid:\t0\n" not in status:
                break
            time.sleep(0.01)
        time.sleep(0.2)  # the other threads
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)

    def per_call(self, calls: int) -> dict[str, float]:
        """``strace -c``'s table: calls (and errors) per tool call, by system call."""
        counts: dict[str, float] = {}
        for line in self.out.read_text().splitlines():
            cols = line.split()
            if len(cols) >= 5 and cols[0][0].isdigit() and cols[3].isdigit() and cols[-1] != "total":
                name = cols[-1]
                counts[name] = round(int(cols[3]) / calls, 2)
                if len(cols) == 6:
                    counts[f"{name} (errors)"] = round(int(cols[4]) / calls, 2)
        counts["total"] = round(sum(v for k, v in counts.items() if "(" not in k), 2)
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


# With --callgrind: the loops that wake on a timer (the runtime's sweep every 100 ms, the
# approvals poll every 2 s, the bus's expiry every 5 s) wake once an hour. Under callgrind a call
# takes ~100x its time, so their wake-ups per call would be a large share of its count, and vary
# with the machine's load.
QUIET_TIMERS = (
    "recheck_interval_s = 3600.0\n[runtime]\ngc_interval_ms = 3600000\n[bus]\nexpire_interval_s = 3600.0\n"
)


def callgrind_argv(out: Path) -> list[str]:
    """valgrind's callgrind with its cache simulation, dumping its counters (and zeroing them)
    each time ``getppid`` is entered: ``serve_counted(marks=True)`` calls it on each signal."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--cache-sim=yes",
        "--dump-before=getppid",
        f"--callgrind-out-file={out}",
        "--trace-children=no",
    ]


def callgrind_window(out: Path, calls: int) -> dict[str, float]:
    """The counters of the window between the two marks (dump 2: dump 1 is start-up and the
    warm-up), per call: instructions (Ir), data reads / writes, first-level and last-level
    cache misses (simulated: the same on a busy machine and an idle one)."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) < 2:
        raise RuntimeError(f"callgrind dumped {len(dumps)} times; two marks expected")
    events: list[str] = []
    totals: list[int] = []
    for line in dumps[1].read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith(("summary:", "totals:")):
            totals = [int(v) for v in line.split()[1:]]
    return {e: round(v / calls, 1) for e, v in zip(events, totals, strict=False)} | {"dumps": len(dumps)}
