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
    bench_policy_data,
    concurrent_calls,
    gateway_env,
    latency_summary,
    median,
    sequential_calls,
    stdio_session,
    text_of,
    write_gateway_config,
)

TICK = os.sysconf("SC_CLK_TCK")


def _everything(verification: str) -> str:
    return (
        f'[servers.everything]\ncommand = "node"\nargs = ["{EVERYTHING_JS}", "stdio"]\n'
        f'verification = "{verification}"\n'
    )


def configs(tmp: Path) -> dict[str, Path]:
    data = bench_policy_data(tmp / "policy", "bench", [])
    out = {}
    for lane in (True, False):
        flag = f"stdio_fast_lane = {'true' if lane else 'false'}\n"
        tag = "lane" if lane else "sdk"
        out[f"secure_{tag}"] = write_gateway_config(
            tmp / f"secure_{tag}",
            _everything("tofu"),
            security=True,
            principal="bench",
            policy_data=data,
            extra="[mcp]\n" + flag,
        )
        out[f"off_{tag}"] = write_gateway_config(
            tmp / f"off_{tag}",
            _everything("off"),
            security=False,
            extra='[mcp]\ntool_verification = "off"\n' + flag,
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
        if stat.rsplit(")", 1)[1].split()[1] == me and b"mcp" in cmd:
            seen.add(int(entry.name))
            return int(entry.name)
    raise RuntimeError("the gateway process was not found")


def expected(msg: str) -> str:
    return f"Echo: {msg}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-stdio-cpu-"))
    cfgs = configs(tmp)
    names = list(cfgs)
    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    errors = 0
    async with AsyncExitStack() as stack:
        sessions, pids, seen = {}, {}, set()
        for name, cfg in cfgs.items():
            sessions[name] = await stack.enter_async_context(
                stdio_session(str(SYMBI), ["mcp", "--config", str(cfg)], gateway_env(), cwd=ROOT)
            )
            pids[name] = gateway_pid(seen)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                session = sessions[name]

                async def call(msg: str, s: Any = session) -> str | None:
                    return text_of(await s.call_tool("everything__echo", {"message": msg}))

                await sequential_calls(call, 20, f"{name}-{r}-warm", expected)
                c0 = cpu_s(pids[name])
                seq = await sequential_calls(call, args.sequential, f"{name}-{r}-seq", expected)
                conc = await concurrent_calls(call, args.callers, args.per_caller, f"{name}-{r}-c", expected)
                used = cpu_s(pids[name]) - c0
                n = args.sequential + args.callers * args.per_caller
                errors += seq.errors + seq.misrouted + conc.errors + conc.misrouted
                rows[name].append(
                    {
                        "cpu_us_per_call": 1e6 * used / n,
                        "p50_ms": latency_summary(seq.latencies)["p50_ms"],
                        "calls_per_s": conc.calls_per_s,
                    }
                )
    out: dict[str, Any] = {
        "benchmark": "stdio gateway CPU per call, fast lane on/off",
        "rounds": args.rounds,
        "calls_per_round": args.sequential + args.callers * args.per_caller,
        "host": {
            "cpus": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%Y-%m-%d %H:%M"),
        },
        "gateways": {
            n: {k: round(median([row[k] for row in rows[n]]), 3) for k in rows[n][0]} for n in names
        },
    }
    out["lane_vs_sdk"] = {
        kind: {
            k: round(
                median([a[k] / b[k] for a, b in zip(rows[f"{kind}_lane"], rows[f"{kind}_sdk"], strict=True)]),
                3,
            )
            for k in ("cpu_us_per_call", "p50_ms", "calls_per_s")
        }
        for kind in ("secure", "off")
    }
    out["errors"] = errors
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--sequential", type=int, default=200)
    p.add_argument("--callers", type=int, default=8)
    p.add_argument("--per-caller", type=int, default=50)
    args = p.parse_args()
    out = anyio.run(run, args)
    print(json.dumps(out, indent=2))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
