"""Gateway CPU per ``tools/call`` over stdio, the client-facing fast lane on and off, one JSON document.

    .venv/bin/python bench/stdio_cpu.py [--rounds 4] [--sequential 200] [--callers 8] [--per-caller 50]

Four ``symbi mcp`` gateways in front of server-everything's ``echo`` (one SDK session each, kept
open): ``secure_lane`` / ``secure_sdk`` (the repo's ``policies.rego``, signed audit log, tofu;
``mcp.stdio_fast_lane`` on / off) and ``off_lane`` / ``off_sdk`` (policy, audit and
verification off). Each round measures every gateway once, the order rotating: sequential calls,
then ``--callers`` concurrent callers. The number that survives a shared machine is the
gateway process's own CPU (``/proc/PID/stat`` utime + stime, the upstream not included) over
the calls it served: ``cpu_us_per_call``, medians over rounds, and each lane's ratio to its
SDK twin round by round (below 1: the lane costs less). Wall-clock p50 and calls/s are printed
too; on a loaded machine they measure the scheduler. Every reply is checked.
``--only off`` (or ``secure``) runs only those gateways (and the relay): fewer targets per
round, less drift between a gateway and its twin. ``--baseline-tree DIR`` adds ``secure_base`` /
``off_base`` (the same gateways run from another checkout, the lane on where that tree has it) and ``lane_vs_baseline_tree`` (this tree's lane
gateways over them, round by round). ``relay`` (bench/peers/json_relay.py, the floor of
bench/speed.py) is measured the same way; ``off_lane_vs_relay`` is the checks-off gateway over it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import tempfile
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio

from bench._common import (
    EVERYTHING_JS,
    ROOT,
    SYMBI,
    baseline_policy_data,
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

TICK = os.sysconf("SC_CLK_TCK")
RELAY = ROOT / "bench" / "peers" / "json_relay.py"  # the floor: parse, rename, re-serialise


def configs(tmp: Path, baseline: Path | None = None) -> dict[str, Path]:
    """Each gateway's config; with ``baseline`` also ``secure_base`` / ``off_base``, the lane
    as that checkout has it (a tree older than the lane does not know its key: left out)."""
    data = bench_policy_data(tmp / "policy", "bench", [])
    out = {}
    kinds: list[tuple[str, bool, Path | None]] = [("lane", True, None), ("sdk", False, None)]
    if baseline is not None:
        kinds.append(("base", True, baseline))
    for tag, lane, tree in kinds:
        flag = f"stdio_fast_lane = {'true' if lane else 'false'}\n"
        out[f"secure_{tag}"] = write_gateway_config(
            tmp / f"secure_{tag}",
            everything_toml("tofu"),
            security=True,
            principal="bench",
            policy_data=baseline_policy_data(tmp / "policy_base", tree) if tree else data,
            extra="[mcp]\n" + flag,
            tree=tree,
        )
        if tree is not None:  # that tree's own policy file, which its gateway's input fits
            cfg = out[f"secure_{tag}"]
            cfg.write_text(
                cfg.read_text().replace(f'"{ROOT / "policies.rego"}"', f'"{tree / "policies.rego"}"')
            )
        out[f"off_{tag}"] = write_gateway_config(
            tmp / f"off_{tag}",
            everything_toml("off"),
            security=False,
            extra='[mcp]\ntool_verification = "off"\n' + flag,
            tree=tree,
        )
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def gateway_pid(seen: set[int]) -> int:
    """The ``symbi mcp`` child started last (a direct child of this process, not seen before)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in seen:
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and (b"mcp" in cmd or RELAY.name.encode() in cmd):
            seen.add(int(entry.name))
            return int(entry.name)
    raise RuntimeError("the gateway process was not found")


def expected(msg: str) -> str:
    return f"Echo: {msg}"


RATIOS = ("cpu_us_per_call", "p50_ms", "calls_per_s")


async def open_sessions(
    stack: AsyncExitStack, cfgs: dict[str, Path], baseline_tree: Path | None
) -> tuple[dict[str, Any], dict[str, int]]:
    """One SDK session per gateway (``*_base`` run from ``baseline_tree``) and one to the relay,
    kept open on ``stack``, and each one's process id."""
    sessions: dict[str, Any] = {}
    pids: dict[str, int] = {}
    seen: set[int] = set()
    for name, cfg in cfgs.items():
        env, cwd = gateway_env(), ROOT
        if name.endswith("_base"):
            assert baseline_tree is not None
            env, cwd = {**env, "PYTHONPATH": str(baseline_tree)}, baseline_tree
        sessions[name] = await stack.enter_async_context(
            stdio_session(str(SYMBI), ["mcp", "--config", str(cfg)], env, cwd=cwd)
        )
        pids[name] = gateway_pid(seen)
    node = ["node", str(EVERYTHING_JS), "stdio"]
    sessions["relay"] = await stack.enter_async_context(
        stdio_session(sys.executable, [str(RELAY), "everything", "--", *node])
    )
    pids["relay"] = gateway_pid(seen)
    return sessions, pids


async def measure(session: Any, pid: int, tag: str, args: argparse.Namespace) -> tuple[dict[str, float], int]:
    """One gateway's turn in a round: warm-up, sequential then concurrent calls; its row (the
    process's CPU per call over both, p50, calls/s) and the wrong or failed replies."""

    async def call(msg: str) -> str | None:
        return text_of(await session.call_tool("everything__echo", {"message": msg}))

    await sequential_calls(call, 20, f"{tag}-warm", expected)
    c0 = cpu_s(pid)
    seq = await sequential_calls(call, args.sequential, f"{tag}-seq", expected)
    conc = await concurrent_calls(call, args.callers, args.per_caller, f"{tag}-c", expected)
    used = cpu_s(pid) - c0
    n = args.sequential + args.callers * args.per_caller
    row = {
        "cpu_us_per_call": 1e6 * used / n,
        "p50_ms": latency_summary(seq.latencies)["p50_ms"],
        "calls_per_s": conc.calls_per_s,
    }
    return row, seq.errors + seq.misrouted + conc.errors + conc.misrouted


def ratios(over: list[dict[str, float]], under: list[dict[str, float]]) -> dict[str, float]:
    """``over``'s rows over ``under``'s, round by round, the median of each number's ratios."""
    return {k: round(median([a[k] / b[k] for a, b in zip(over, under, strict=True)]), 3) for k in RATIOS}


def report(args: argparse.Namespace, rows: dict[str, list[dict[str, float]]], errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "stdio gateway CPU per call, fast lane on/off",
        "rounds": args.rounds,
        "calls_per_round": args.sequential + args.callers * args.per_caller,
        "host": {
            "cpus": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%Y-%m-%d %H:%M"),
        },
        "gateways": {n: {k: round(median([row[k] for row in r]), 3) for k in r[0]} for n, r in rows.items()},
    }
    out["lane_vs_sdk"] = {kind: ratios(rows[f"{kind}_lane"], rows[f"{kind}_sdk"]) for kind in args.kinds}
    if "off" in args.kinds:  # the forwarding core over the floor, round by round
        out["off_lane_vs_relay"] = ratios(rows["off_lane"], rows["relay"])
    if args.baseline_tree is not None:  # this tree's gateways over the baseline tree's, round by round
        out["lane_vs_baseline_tree"] = {
            kind: ratios(rows[f"{kind}_lane"], rows[f"{kind}_base"]) for kind in args.kinds
        }
        out["baseline_tree"] = str(args.baseline_tree)
    out["errors"] = errors
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-stdio-cpu-"))
    cfgs = {n: c for n, c in configs(tmp, args.baseline_tree).items() if n.split("_")[0] in args.kinds}
    names = [*cfgs, "relay"]
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors = 0
    async with AsyncExitStack() as stack:
        sessions, pids = await open_sessions(stack, cfgs, args.baseline_tree)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                row, wrong = await measure(sessions[name], pids[name], f"{name}-{r}", args)
                rows[name].append(row)
                errors += wrong
    return report(args, rows, errors)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--per-caller", type=int, default=50)
    p.add_argument(
        "--only",
        dest="kinds",
        choices=("secure", "off"),
        action="append",
        help="only these gateways (repeatable; default both): fewer targets per round, less drift",
    )
    p.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="also secure_base / off_base: the same gateways run from this checkout (before a change)",
    )
    args = p.parse_args()
    args.kinds = tuple(args.kinds or ("secure", "off"))
    if args.baseline_tree is not None:
        args.baseline_tree = args.baseline_tree.resolve()
    out = anyio.run(run, args)
    print(json.dumps(out, indent=2))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
