"""Benchmark: policy decisions per second and latency, embedded regorus vs pure Python.

One command, one process, JSON on stdout:

    .venv/bin/python bench/policy.py [--seconds 2] [--threads 1,2,4] [--timed 3000]

On the repo's ``policies.rego`` + ``policies/data.json`` with the 95 inputs of
``policies/cases.json`` cycled (allows and denies of every kind):

- evaluated: ``EmbeddedEngine.decide`` with its decision cache off: every decision is a
  regorus evaluation;
- cached_repeats: the gateway's engine (cache on) on the same cycled inputs: after the
  second round every decision is a cache hit (the same principal asking the same question
  with the same counters, e.g. a tool listed again; a call's decision is kept from its second
  asking);
- cached_distinct: the gateway's engine with ``context.calls_last_hour`` (a counter the
  policy reads) and one argument different on every decision, as consecutive calls are: every
  decision is a miss, what the cache costs when it cannot help;
- baseline: a hand-written Python evaluation of the same rules on the same inputs, measured
  in the same run; it is checked first to give the engine's decision on every case and on
  seeded random inputs, so the ratio compares equal work;
- threads: total decisions/s with N threads, one engine per thread (regorus holds the GIL,
  so expect no gain: the way to scale is worker processes);
- before_after: evaluated decisions of a previous policy (``--before``, by default
  ``tests/policy/reference/policies_v6.rego``, session 19's: a lookup per role for the tool
  lists, the upstreams' verification read from the data per call; ``policies_v5.rego``, sessions
  10-18's: the same rules with more builtin calls per decision; ``policies_v4.rego``, session 9's: a tool call's lists and
  conditions from one index keyed by the name's part before ``__``; ``policies_v3.rego``, session 8's:
  one-rule fast paths (facts) over an index that holds the principals; ``policies_v2.rego``,
  session 7's: the deny reasons of a tool call in one rule, everything else rule by rule;
  ``policies_v1.rego`` globs every pattern and evaluates every rule of every kind) and of
  the current one, same data, same inputs, interleaved round by round (``--rounds``):
  medians and the ratio (the issue-16 target counts evaluated decisions: >= 10,000/s,
  p99 <= 300 us);
- step: the whole ``PolicyStep`` (input document + decision + conditions) around a trivial
  endpoint, minus the bare endpoint: the policy's cost inside one proxied call (cache on,
  and the counters advance, as in the gateway).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when run as a script; a sibling module named like a stdlib one
# (bench/http.py) would shadow it, so take bench/ off the path and put the repo on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench._pure_policy import PurePolicy
from gateway.chain import build_chain
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.policy.cases import decision_dict, load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters
from gateway.policy.loader import PolicyFiles, discover_files
from gateway.steps.policy import PolicyStep


def pct(sorted_ns: list[int], p: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(p * len(sorted_ns)))] / 1000.0


def latency(fn: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], n: int) -> dict[str, float]:
    for i in range(200):  # warm-up (regorus prepares lazily)
        fn(inputs[i % len(inputs)])
    samples = []
    for i in range(n):
        inp = inputs[i % len(inputs)]
        t0 = time.perf_counter_ns()
        fn(inp)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "p50_us": round(pct(samples, 0.50), 2),
        "p90_us": round(pct(samples, 0.90), 2),
        "p99_us": round(pct(samples, 0.99), 2),
        "mean_us": round(statistics.fmean(samples) / 1000, 2),
    }


def throughput(
    fn: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]], seconds: float
) -> dict[str, float]:
    n, end = 0, time.perf_counter() + seconds
    c0, t0 = time.thread_time(), time.perf_counter()
    while time.perf_counter() < end:
        for inp in inputs:
            fn(inp)
        n += len(inputs)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    return {"decisions_per_s": round(n / wall), "decisions_per_cpu_s": round(n / cpu) if cpu else 0}


def threaded(
    engine: EmbeddedEngine, inputs: list[dict[str, Any]], threads: int, seconds: float
) -> dict[str, Any]:
    counts = [0] * threads
    start, stop = threading.Barrier(threads + 1), threading.Event()

    def work(i: int) -> None:
        engine.decide(inputs[0])  # builds this thread's own engine before the clock starts
        start.wait()
        while not stop.is_set():
            for inp in inputs:
                engine.decide(inp)
            counts[i] += len(inputs)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    return {"threads": threads, "decisions_per_s": round(sum(counts) / (time.perf_counter() - t0))}


def step_overhead(engine: EmbeddedEngine, n: int) -> dict[str, float]:
    tool = ToolInfo(
        name="fs__read_text_file",
        original_name="read_text_file",
        upstream="fs",
        definition={},
        verification="pinned",
    )
    up = UpstreamInfo(name="fs", transport="stdio")
    principal = Principal(id="admin", roles=("admin",))  # admin: no per-minute limit trips in the loop

    async def endpoint(call: CallContext) -> Any:
        from mcp.types import CallToolResult, TextContent

        return CallToolResult(content=[TextContent(type="text", text="ok")])

    def new_call() -> CallContext:
        return CallContext(
            principal=principal,
            kind="tools/call",
            target=tool.name,
            arguments={"path": "/srv/symbi/a.txt", "token": "x"},
            tool=tool,
            upstream=up,
        )

    async def measure(handler: Any) -> list[int]:
        out = []
        for _ in range(n):
            call = new_call()
            t0 = time.perf_counter_ns()
            await handler(call)
            out.append(time.perf_counter_ns() - t0)
        return sorted(out)

    class Unlimited(CallCounters):  # the step's own cost, not the data's per-minute limit
        def admit(self, principal: str, tool: str, limit_per_minute: int | None, tool_bucket: int) -> bool:
            return super().admit(principal, tool, None, tool_bucket)

    bare = asyncio.run(measure(build_chain([], endpoint)))
    with_step = asyncio.run(measure(build_chain([PolicyStep(engine, Unlimited())], endpoint)))
    return {
        "bare_endpoint_p50_us": round(pct(bare, 0.5), 2),
        "with_policy_step_p50_us": round(pct(with_step, 0.5), 2),
        "policy_step_p50_us": round(pct(with_step, 0.5) - pct(bare, 0.5), 2),
        "policy_step_p99_us": round(pct(with_step, 0.99) - pct(bare, 0.99), 2),
    }


def listing(engine: EmbeddedEngine, evaluated: EmbeddedEngine, rounds: int) -> dict[str, Any]:
    """``filter_listing`` of 50 upstreams x 40 tools for one principal (``tools/list``), with
    a listing's constant (zero) counters: evaluated every time vs the cached engine (the
    first listing fills the cache)."""
    from gateway.steps.policy import filter_listing

    names = ["time", "everything", "fs", *(f"up{i}" for i in range(47))]
    tools = [
        ToolInfo(name=f"{u}__t{j}", original_name=f"t{j}", upstream=u, definition={}, verification="pinned")
        for u in names
        for j in range(40)
    ]
    principal = Principal(id="local", roles=("developer",), source="stdio")

    def timed(eng: EmbeddedEngine) -> tuple[float, int]:
        t0 = time.perf_counter()
        shown = filter_listing(eng, principal, tools)
        return (time.perf_counter() - t0) * 1000, len(shown)

    first_ms, shown = timed(engine)
    cached = sorted(timed(engine)[0] for _ in range(rounds))
    plain = sorted(timed(evaluated)[0] for _ in range(rounds))
    return {
        "tools": len(tools),
        "listed": shown,
        "evaluated_ms": round(plain[len(plain) // 2], 1),
        "cached_first_ms": round(first_ms, 1),
        "cached_again_ms": round(cached[len(cached) // 2], 1),
    }


def _distinct(engine: EmbeddedEngine) -> Callable[[dict[str, Any]], Any]:
    """``engine.decide`` on the input as the next call would ask it: the hourly counter moved
    (kept below every cap in the data) and an argument no rule looks at differs, as a real
    call's arguments do. The policy reads both (all of ``arguments``, since it indexes them
    with a variable), so no key comes back: every decision is a miss."""
    n = iter(range(1 << 62))

    def decide(inp: dict[str, Any]) -> Any:
        i = next(n)
        ctx = {**inp["context"], "calls_last_hour": i % 89}
        args = (
            {**inp["arguments"], "request_id": i}
            if isinstance(inp.get("arguments"), dict)
            else {"request_id": i}
        )
        return engine.decide({**inp, "context": ctx, "arguments": args})

    return decide


def _agreement(engine: EmbeddedEngine, pure: PurePolicy, inputs: list[dict[str, Any]]) -> tuple[int, int]:
    """(agreeing, compared): the engine's failed evaluations (both engines refuse those
    inputs; the gateway denies) are left out of the comparison."""
    same = total = 0
    for i in inputs:
        d = decision_dict(engine.decide(i))
        if any(r.startswith("policy evaluation failed") for r in d["reasons"]):
            continue
        total += 1
        same += d == pure.decide(i)
    return same, total


def before_after(
    files: PolicyFiles, inputs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    """A previous policy vs the current one (both evaluated every time), interleaved."""
    sides = {
        "before": EmbeddedEngine(PolicyFiles(policy=args.before, data=files.data), cache_entries=0),
        "after": EmbeddedEngine(files, cache_entries=0),
    }
    for eng in sides.values():
        if not eng.load():
            raise SystemExit("a policy does not load")
    same = sum(
        decision_dict(sides["before"].decide(i)) == decision_dict(sides["after"].decide(i)) for i in inputs
    )
    rounds: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, eng in sides.items():
            rounds[name].append(
                {**latency(eng.decide, inputs, args.timed), **throughput(eng.decide, inputs, args.seconds)}
            )
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()}
    b, a = med["before"], med["after"]
    return {
        "before_policy": str(
            args.before.relative_to(ROOT) if args.before.is_relative_to(ROOT) else args.before
        ),
        "same_decisions": f"{same}/{len(inputs)}",
        "rounds": args.rounds,
        **med,
        "ratio_after_over_before": {
            "decisions_per_s": round(a["decisions_per_s"] / b["decisions_per_s"], 3),
            "decisions_per_cpu_s": round(a["decisions_per_cpu_s"] / b["decisions_per_cpu_s"], 3),
            "p50": round(a["p50_us"] / b["p50_us"], 3),
            "p99": round(a["p99_us"] / b["p99_us"], 3),
        },
    }


def main() -> int:
    args = _parser().parse_args()

    from tests.policy.randinput import random_inputs

    files = discover_files()
    engine = EmbeddedEngine(files)  # as the gateway builds it: decision cache on
    evaluated = EmbeddedEngine(files, cache_entries=0)
    if not engine.load() or not evaluated.load():
        print(json.dumps({"error": "policies.rego does not load"}))
        return 1
    inputs = [c.input for c in load_cases(ROOT / "policies" / "cases.json")]
    pure = PurePolicy(json.loads(files.data.read_text()) if files.data else {})
    agree_cases = _agreement(evaluated, pure, inputs)
    agree_random = _agreement(evaluated, pure, random_inputs(16, args.random))

    results = _timed(engine, evaluated, pure, inputs, args)
    base = results["pure_python_baseline"]
    out = {
        "benchmark": "policy",
        "inputs": len(inputs),
        "baseline_agrees_on_cases": f"{agree_cases[0]}/{agree_cases[1]}",
        "baseline_agrees_on_random_inputs": f"{agree_random[0]}/{agree_random[1]}",
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        **results,
        "ratio_throughput_over_baseline": {
            k: round(v["decisions_per_s"] / base["decisions_per_s"], 3) for k, v in results.items()
        },
        "threads": [threaded(evaluated, inputs, int(t), args.seconds) for t in args.threads.split(",")],
    }
    out["before_after"] = before_after(files, inputs, args)
    out["listing"] = listing(engine, evaluated, 2)
    hits, misses = engine.cache_hits, engine.cache_misses
    out["step"] = {
        **step_overhead(engine, args.timed),
        "cache_hits": engine.cache_hits - hits,
        "cache_misses": engine.cache_misses - misses,
    }
    out |= {
        "targets": {"decisions_per_s": 10000, "p99_us": 300},
    }
    print(json.dumps(out, indent=2))
    engine.close()
    ok = agree_cases[0] == agree_cases[1] and agree_random[0] == agree_random[1]
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--timed", type=int, default=3000)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of before_after")
    ap.add_argument("--random", type=int, default=500, help="seeded random inputs checked for agreement")
    ap.add_argument(
        "--before",
        type=Path,
        default=ROOT / "tests" / "policy" / "reference" / "policies_v6.rego",
        help="the previous policy before_after compares (same data)",
    )
    return ap


def _timed(
    engine: EmbeddedEngine,
    evaluated: EmbeddedEngine,
    pure: PurePolicy,
    inputs: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Latency and throughput of each way to decide, one after the other (with the cache's
    hits and misses of the cached ones)."""
    runs: dict[str, Callable[[dict[str, Any]], Any]] = {
        "evaluated": evaluated.decide,
        "cached_repeats": engine.decide,
        "cached_distinct": _distinct(engine),
        "pure_python_baseline": pure.decide,
    }
    results: dict[str, dict[str, float]] = {}
    for name, fn in runs.items():
        hits, misses = engine.cache_hits, engine.cache_misses
        results[name] = {**latency(fn, inputs, args.timed), **throughput(fn, inputs, args.seconds)}
        if name.startswith("cached"):
            results[name] |= {
                "cache_hits": engine.cache_hits - hits,
                "cache_misses": engine.cache_misses - misses,
            }
    return results


if __name__ == "__main__":
    raise SystemExit(main())
