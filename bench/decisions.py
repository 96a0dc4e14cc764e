"""Policy evaluations per ``tools/call`` and per ``tools/list`` on the default secure path:
operation counts, not timings, so they are the same on a busy machine and an idle one.

    .venv/bin/python bench/decisions.py [--calls 50] [--lists 5]

The whole gateway as ``make_gateway`` assembles it, in this process (default policy
``policies.rego`` with the bench principal as a developer, signed audit log, ``tofu``
verification), in front of server-everything over stdio; calls made as the stdio front makes
them (the caller's agent for its session). The embedded engine's ``cache_misses`` (decisions
evaluated) and ``cache_hits`` (answered from its decision cache) are read around:

- ``first_call`` and ``repeated_call`` (per call, over ``--calls`` calls of ``everything__echo``);
- ``first_list``, ``list_again`` and ``list_after_calls`` (a listing after more calls: the
  principal's counters moved), per listing of every tool the caller may see;
- ``in_gateway`` (``--timed N``, 0: off): the policy's cost inside the gateway per
  ``tools/call`` (every ``engine.decide`` of the call: the visibility check and the call
  decision, with the cache key, the input and the evaluation), wall and thread-CPU time per
  call, p50/p90, on the real, sparse call path (an upstream round trip between decisions), for
  the policy in force (``after``) and a previous one (``--before``, by default session 19's
  ``tests/policy/reference/policies_v6.rego``) put in force in the same gateway, alternated
  ``--rounds`` times. Times are the machine's: compare the two sides, not runs.

JSON on stdout. Run it with ``PYTHONPATH=<another checkout>`` to count that checkout's code.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import runpy
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from types import ModuleType
from typing import Any

import anyio

from bench._common import bench_policy_data, echo_caller, echo_gateway
from gateway.app import Gateway
from gateway.context import Decision
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyBundle, PolicyFiles, load_checked

PRINCIPAL = "bench"
ROOT = Path(__file__).resolve().parent.parent
# this checkout's bench/_sibling.py by its path: an older checkout named by PYTHONPATH has none
sibling: Callable[[str], ModuleType] = runpy.run_path(str(ROOT / "bench" / "_sibling.py"))["sibling"]


def counts(engine: EmbeddedEngine) -> tuple[int, int]:
    return engine.cache_hits, engine.cache_misses


def delta(engine: EmbeddedEngine, before: tuple[int, int], per: int = 1) -> dict[str, float]:
    hits, misses = counts(engine)
    return {"evaluations": (misses - before[1]) / per, "cache_hits": (hits - before[0]) / per}


class DecideClock:
    """Wall and thread-CPU nanoseconds spent in ``engine.decide`` (the gateway's only way to a
    decision with the embedded engine), summed until ``take``."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.wall = self.cpu = 0
        decide = engine.decide

        def timed(inp: Mapping[str, Any]) -> Decision:
            w, c = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return decide(inp)
            finally:
                self.wall += time.perf_counter_ns() - w
                self.cpu += time.thread_time_ns() - c

        # the wrapper replaces the method on this instance only (mypy takes methods as read-only)
        engine.decide = timed  # type: ignore[method-assign,assignment]

    def take(self) -> tuple[int, int]:
        out = (self.wall, self.cpu)
        self.wall = self.cpu = 0
        return out


def _pcts(ns: list[int]) -> dict[str, float]:
    ns = sorted(ns)
    return {
        "p50_us": round(ns[len(ns) // 2] / 1000, 1),
        "p90_us": round(ns[int(len(ns) * 0.9)] / 1000, 1),
        "mean_us": round(statistics.fmean(ns) / 1000, 1),
    }


async def in_gateway(
    engine: EmbeddedEngine,
    call: Callable[[int], Awaitable[None]],
    before: PolicyBundle,
    timed: int,
    rounds: int,
) -> dict[str, Any]:
    """The policy's time per call with the policy in force and with ``before``, alternated."""
    after = engine.bundle
    assert after is not None
    clock = DecideClock(engine)
    sides: dict[str, tuple[PolicyBundle, list[int], list[int], list[int]]] = {
        "after": (after, [], [], []),
        "before": (before, [], [], []),
    }
    n = 10_000
    for _ in range(rounds):
        for bundle, wall, cpu, evals in sides.values():
            with engine.reload_lock:
                engine.adopt(bundle, version=0, publisher="bench/decisions.py")
            for _ in range(5):  # this thread's engine for the policy, the listing's decision cached
                n += 1
                await call(n)
            clock.take()
            for _ in range(timed):
                n += 1
                misses = engine.cache_misses
                await call(n)
                w, c = clock.take()
                wall.append(w)
                cpu.append(c)
                evals.append(engine.cache_misses - misses)
    with engine.reload_lock:
        engine.adopt(after, version=0, publisher="bench/decisions.py")
    out: dict[str, Any] = {"calls_per_side": timed * rounds, "rounds": rounds}
    for name, (_, wall, cpu, evals) in sides.items():
        out[name] = {"wall": _pcts(wall), "cpu": _pcts(cpu), "evaluations_per_call": statistics.fmean(evals)}
    out["ratio_after_over_before"] = {
        f"{k}_p50": round(out["after"][k]["p50_us"] / out["before"][k]["p50_us"], 3) for k in ("wall", "cpu")
    }
    return out


async def measure(
    gw: Gateway,
    calls: int,
    lists: int,
    before_policy: PolicyBundle | None = None,
    timed: int = 0,
    rounds: int = 1,
) -> dict[str, Any]:
    engine = gw.policy
    assert isinstance(engine, EmbeddedEngine), "the default config's engine is the embedded one"
    who, call = echo_caller(gw, PRINCIPAL)

    async def listing() -> int:
        return len(await gw.visible_tools(who))

    out: dict[str, Any] = {}
    before = counts(engine)
    shown = await listing()
    out["first_list"] = {"tools": shown, **delta(engine, before)}
    before = counts(engine)
    for _ in range(lists):
        await listing()
    out["list_again"] = delta(engine, before, lists)
    before = counts(engine)
    await call(0)
    out["first_call"] = delta(engine, before)
    before = counts(engine)
    for i in range(1, calls + 1):
        await call(i)
    out["repeated_call"] = delta(engine, before, calls)
    before = counts(engine)
    for _ in range(lists):
        await call(-1)
        await listing()
    out["list_after_calls"] = {
        k: v - out["repeated_call"][k] for k, v in delta(engine, before, lists).items()
    }  # per listing, less the call made before it
    if timed and before_policy is not None:
        out["in_gateway"] = await in_gateway(engine, call, before_policy, timed, rounds)
    return out


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    data = bench_policy_data(tmp, PRINCIPAL)
    async with echo_gateway(tmp, PRINCIPAL, policy_data=data) as gw:
        before = None
        if args.timed:
            files = PolicyFiles(policy=args.before, data=data)
            before = load_checked(files)
        result = await measure(gw, args.calls, args.lists, before, args.timed, args.rounds)
    return {
        "benchmark": "decisions",
        "settings": {
            "calls": args.calls,
            "lists": args.lists,
            "timed": args.timed,
            "rounds": args.rounds,
            "before": str(args.before),
        },
        **result,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--lists", type=int, default=5)
    ap.add_argument(
        "--timed", type=int, default=200, help="timed calls per side and round (0: no in_gateway)"
    )
    ap.add_argument("--rounds", type=int, default=3, help="in_gateway rounds, the two policies alternated")
    ap.add_argument(
        "--before",
        type=Path,
        default=ROOT / "tests" / "policy" / "reference" / "policies_v6.rego",
        help="the previous policy in_gateway compares (same data)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="symbi-decisions-") as d:
        out = anyio.run(run, args, Path(d))
    # this checkout's helper: an older checkout's bench._common may not have it
    out["gateway_code"] = sibling("_common").loaded_gateway_tree()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
