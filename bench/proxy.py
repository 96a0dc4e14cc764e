"""What the gateway adds to a tool call: server-everything's ``echo`` directly vs through ``symbi mcp``.

One command, one JSON document on stdout::

    .venv/bin/python bench/proxy.py [--rounds 3] [--sequential 500] [--callers 8] [--per-caller 100]

Targets, all over stdio with the SDK ``ClientSession`` (2025-11-25 handshake), kept open
for the whole run and measured in interleaved rounds (the order rotates every round):

- ``direct``: node server-everything itself;
- ``gateway``: ``symbi mcp`` whose only upstream is server-everything (``verification =
  "warn"``, policy and audit off: the forwarding core);
- ``gateway_secure`` (``--secure``): the same with the default policy and audit log on.

Each round: 20 warm-up calls, N sequential calls (latency percentiles), then C concurrent
callers x M calls on the same session (calls/s). Every call carries a unique message and
its reply is checked: ``misrouted`` counts replies that belong to another call (must be 0).
Ratios are per round against ``direct`` of the same round, then the median over rounds.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where a sibling named like a stdlib
# module (bench/http.py) would shadow it: import from the repo root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import platform
import tempfile
from contextlib import AsyncExitStack
from typing import Any

import anyio

from bench._common import (
    EVERYTHING_JS,
    SYMBI,
    CallStats,
    bench_policy_data,
    concurrent_calls,
    everything_toml,
    gateway_env,
    latency_summary,
    median,
    sequential_calls,
    stdio_session,
    text_of,
    write_gateway_config,
)


def expected(msg: str) -> str:
    return f"Echo: {msg}"


def _everything(pass_through: bool) -> str:
    return everything_toml("warn") + f"pass_through = {'true' if pass_through else 'false'}\n"


async def _round(session: Any, tool: str, tag: str, args: argparse.Namespace) -> dict[str, CallStats]:
    async def call(msg: str) -> str | None:
        return text_of(await session.call_tool(tool, {"message": msg}))

    await sequential_calls(call, 20, f"{tag}-warm", expected)
    seq = await sequential_calls(call, args.sequential, f"{tag}-seq", expected)
    conc = await concurrent_calls(call, args.callers, args.per_caller, f"{tag}-conc", expected)
    return {"sequential": seq, "concurrent": conc}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if not EVERYTHING_JS.exists():
        raise SystemExit(f"server-everything missing at {EVERYTHING_JS} (run `make setup`)")
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-proxy-"))
    tool = "echo" if args.pass_through else "everything__echo"
    targets: dict[str, tuple[str, list[str], dict[str, str] | None, str]] = {
        "direct": ("node", [str(EVERYTHING_JS), "stdio"], None, "echo"),
    }
    cfg = write_gateway_config(tmp / "core", _everything(args.pass_through), security=False)
    targets["gateway"] = (str(SYMBI), ["mcp", "--config", str(cfg)], gateway_env(), tool)
    if args.secure:
        data = bench_policy_data(tmp / "secure", "bench", ["echo"] if args.pass_through else [])
        cfg2 = write_gateway_config(
            tmp / "secure", _everything(args.pass_through), security=True, principal="bench", policy_data=data
        )
        targets["gateway_secure"] = (str(SYMBI), ["mcp", "--config", str(cfg2)], gateway_env(), tool)

    per_round: list[dict[str, dict[str, CallStats]]] = []
    async with AsyncExitStack() as stack:
        sessions = {
            name: await stack.enter_async_context(stdio_session(cmd, argv, env, tmp / f"{name}.stderr"))
            for name, (cmd, argv, env, _tool) in targets.items()
        }
        names = list(targets)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            results: dict[str, dict[str, CallStats]] = {}
            for name in order:
                results[name] = await _round(sessions[name], targets[name][3], f"{name}-r{r}", args)
            per_round.append(results)
    return _report(per_round, list(targets), args)


def _target(per_round: list[dict[str, dict[str, CallStats]]], name: str) -> dict[str, Any]:
    """One target over all rounds: latencies of every call, calls/s the median of the rounds'."""
    seq_all, conc_all = CallStats(), CallStats()
    seq_rate, conc_rate, seq_p50, seq_p99 = [], [], [], []
    for rnd in per_round:
        s, c = rnd[name]["sequential"], rnd[name]["concurrent"]
        seq_all.merge(s)
        conc_all.merge(c)
        seq_rate.append(s.calls_per_s)
        conc_rate.append(c.calls_per_s)
        seq_p50.append(latency_summary(s.latencies)["p50_ms"])
        seq_p99.append(latency_summary(s.latencies)["p99_ms"])
    return {
        "sequential": {
            **latency_summary(seq_all.latencies),
            "p50_ms_per_round": seq_p50,
            "p99_ms_per_round": seq_p99,
            "calls_per_s": round(median(seq_rate), 1),
        },
        "concurrent": {
            **latency_summary(conc_all.latencies),
            "calls_per_s": round(median(conc_rate), 1),
            "calls_per_s_per_round": [round(x, 1) for x in conc_rate],
        },
        "calls": seq_all.calls + conc_all.calls,
        "ok": seq_all.ok + conc_all.ok,
        "misrouted": seq_all.misrouted + conc_all.misrouted,
        "errors": seq_all.errors + conc_all.errors,
    }


def _vs_direct(
    per_round: list[dict[str, dict[str, CallStats]]], name: str, targets: dict[str, Any]
) -> dict[str, Any]:
    """``name`` against ``direct`` of the same round, then the median over rounds."""
    added, p99_added, thr, seq_thr = [], [], [], []
    for rnd in per_round:
        d, g = rnd["direct"], rnd[name]
        dl, gl = latency_summary(d["sequential"].latencies), latency_summary(g["sequential"].latencies)
        added.append(gl["p50_ms"] - dl["p50_ms"])
        p99_added.append(gl["p99_ms"] - dl["p99_ms"])
        thr.append(g["concurrent"].calls_per_s / d["concurrent"].calls_per_s)
        seq_thr.append(g["sequential"].calls_per_s / d["sequential"].calls_per_s)
    t, base = targets[name], targets["direct"]
    return {
        "added_p50_ms": round(median(added), 3),
        "added_p50_ms_per_round": [round(x, 3) for x in added],
        "added_p99_ms": round(median(p99_added), 3),
        "p50_ratio": round(t["sequential"]["p50_ms"] / base["sequential"]["p50_ms"], 2),
        "throughput_ratio_concurrent": round(median(thr), 3),
        "throughput_ratio_concurrent_per_round": [round(x, 3) for x in thr],
        "throughput_ratio_sequential": round(median(seq_thr), 3),
    }


def _report(
    per_round: list[dict[str, dict[str, CallStats]]], names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "proxy",
        "transport": "stdio",
        "tool": "echo (server-everything)",
        "rounds": args.rounds,
        "sequential_calls": args.sequential,
        "concurrency": f"{args.callers} callers x {args.per_caller} calls, one session",
        "pass_through": args.pass_through,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "targets": {},
        "ratios_vs_direct": {},
    }
    for name in names:
        out["targets"][name] = _target(per_round, name)
    for name in names[1:]:
        out["ratios_vs_direct"][name] = _vs_direct(per_round, name, out["targets"])
    out["misrouted_total"] = sum(t["misrouted"] for t in out["targets"].values())
    out["errors_total"] = sum(t["errors"] for t in out["targets"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sequential", type=int, default=500)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--per-caller", type=int, default=100)
    p.add_argument(
        "--pass-through",
        action="store_true",
        help="gateway keeps original names (echo, not everything__echo)",
    )
    p.add_argument(
        "--secure", action="store_true", help="also measure the gateway with default policy + audit on"
    )
    args = p.parse_args(argv)
    report = anyio.run(main_async, args)
    print(json.dumps(report, indent=2))
    # A misrouted reply is a correctness bug, not a performance number.
    return 1 if report["misrouted_total"] or report["errors_total"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
