"""Benchmark: what tracing adds to one call through the chain.

One command, one process, JSON on stdout:

    .venv/bin/python bench/tracing.py [--calls 20000] [--steps 6] [--rounds 5]

- traced: ``build_chain`` of N no-op steps (one span each, as in the gateway) inside a request
  span, with the gateway's SDK provider installed and a processor that drops every span (the
  per-step spans are made only while some processor takes spans);
- unexported: the same ``build_chain`` with no processor (the default without an OTLP
  endpoint: no per-step spans, the request span only);
- baseline: the same onion of N no-op steps composed without spans, in the same run.

Rounds alternate; the result is the median per-call cost of each and their difference (the
tracing cost per request), plus the ratio. Compare the difference with ``bench/proxy.py``'s
added latency to see its share of a proxied call.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from opentelemetry.sdk.trace import SpanProcessor

from gateway import telemetry
from gateway.chain import CallNext, build_chain
from gateway.context import CallContext, Principal


class Noop:
    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        return await call_next(call)


def plain(steps: list[Noop], endpoint: CallNext) -> CallNext:
    handler = endpoint
    for step in reversed(steps):

        def bind(s: Noop, inner: CallNext) -> CallNext:
            async def run(call: CallContext) -> Any:
                return await s(call, inner)

            return run

        handler = bind(step, handler)
    return handler


async def endpoint(call: CallContext) -> int:
    return 1


async def per_call_us(handler: CallNext, calls: int, span: bool) -> float:
    call = CallContext(principal=Principal("bench"), kind="tools/call", target="x")
    tracer = telemetry.tracer()
    t0 = time.perf_counter()
    for _ in range(calls):
        if span:
            with tracer.start_as_current_span("tools/call x"):
                await handler(call)
        else:
            await handler(call)
    return (time.perf_counter() - t0) / calls * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    fan = telemetry.install()
    drop = SpanProcessor()  # the base class takes every span and does nothing with it
    steps = [Noop() for _ in range(a.steps)]
    traced, base = build_chain(steps, endpoint), plain(steps, endpoint)
    t_us, u_us, b_us = [], [], []
    for _ in range(a.rounds):
        fan.add(drop)
        t_us.append(await per_call_us(traced, a.calls, span=True))
        fan.remove(drop)
        u_us.append(await per_call_us(traced, a.calls, span=True))
        b_us.append(await per_call_us(base, a.calls, span=False))
    t, u, b = statistics.median(t_us), statistics.median(u_us), statistics.median(b_us)
    print(
        json.dumps(
            {
                "benchmark": "tracing",
                "steps": a.steps,
                "calls_per_round": a.calls,
                "rounds": a.rounds,
                "traced_us_per_call": round(t, 2),
                "unexported_us_per_call": round(u, 2),
                "baseline_us_per_call": round(b, 2),
                "tracing_cost_us_per_call": round(t - b, 2),
                "unexported_cost_us_per_call": round(u - b, 2),
                "ratio": round(t / b, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
