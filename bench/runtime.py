"""The agent runtime's costs: scheduling decisions, memory and CPU with 10,000 agents, hosted
agent start per tier, and what the runtime's steps add to a tools/call.

One command, one JSON document on stdout::

    python bench/runtime.py [--agents 10000] [--calls 400] [--rounds 3] [--tiers bwrap,gvisor] [--idle-s 10]

What is real and what is simulated (also in the JSON, under ``setup``):

- the 10,000 agents are registered in a real ``AgentRuntime`` through the same call the
  fronts make for a new session (``AgentRegistry.for_session``: HMAC id, lifecycle events),
  but no MCP transport is opened for them: 10,000 HTTP sessions do not fit this machine
  next to the other jobs. They are *simulated sessions*: real registry records, real state.
- scheduling decisions: the real ``Scheduler`` with those agents (the fast path: a free
  slot; and the contended path: 1,000 queued calls at mixed priorities, each release
  picks the best waiter with aging);
- memory per idle agent: tracemalloc over registering them (agent record, indexes, ids);
- scheduler CPU with 10k idle agents: the runtime's only periodic work is the gc sweep
  (``gc_interval_ms = 100``, ``gc_batch = 256``); process CPU over wall time while it runs,
  against the same loop with no agents (baseline, same run);
- hosted agent start per tier (bench/_runtime_hosted.py): a real ``symbi serve`` starts
  examples/agents/clock_agent.py in the tier; from the audit log: registered -> Ready (config
  checked, credential made, sandbox command built) and registered -> its first tool call
  reaching the gateway (process started in the sandbox, SDK loaded, connected over the Unix
  socket). Baseline: the same interpreter importing the same SDK on the host, no sandbox, in
  the same run;
- added cost on a tools/call: one gateway in this process (server-everything upstream, policy
  and audit off), the same calls through the chain with and without the runtime's two steps
  (agent + schedule), interleaved, N calls per round.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench._common import everything_toml, latency_summary, median
from bench._runtime_hosted import host_baseline, hosted_start
from gateway.config import load_config
from gateway.config.model import Config
from gateway.config.sections import RuntimeSection
from gateway.context import CallContext, Principal
from gateway.runtime.core import AgentRuntime
from gateway.runtime.scheduler import LEVELS

ROOT = Path(__file__).resolve().parent.parent


class NullSink:
    def __init__(self) -> None:
        self.count = 0

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.count += 1


def _runtime(n_agents: int) -> AgentRuntime:
    rt = AgentRuntime(Config(runtime=RuntimeSection(max_concurrent_agents=n_agents + 100)), NullSink())
    for i in range(n_agents):
        rt.agents.for_session(Principal(id=f"user{i % 500}"), "bench-client", f"http:sess-{i}")
    return rt


# -- 1. memory per idle agent ----------------------------------------------------------------


def memory_per_agent(n: int) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    rt = _runtime(n)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(s.size_diff for s in after.compare_to(before, "filename"))
    del rt
    return {
        "agents": n,
        "bytes_total": total,
        "bytes_per_agent": round(total / n, 1),
        "mb_per_agent": round(total / n / 1e6, 5),
    }


# -- 2. scheduling decisions -----------------------------------------------------------------


async def decisions(rt: AgentRuntime, samples: int) -> dict[str, Any]:
    sched = rt.scheduler
    agents = [a.id for a in rt.agents][:samples]
    fast: list[float] = []
    for a in agents:  # free slot: acquire + release
        t = time.perf_counter()
        await sched.acquire(a, 4, 8)
        sched.release(a)
        fast.append(time.perf_counter() - t)
    # contended: one slot, 1,000 waiters at mixed priorities; each release = one pick
    sched.max_in_flight = 1
    await sched.acquire("holder", 9, 8)
    done = asyncio.Event()
    granted = 0

    async def waiter(i: int) -> None:
        nonlocal granted
        await sched.acquire(agents[i % len(agents)], i % LEVELS, 8)
        granted += 1
        done.set()

    tasks = [asyncio.create_task(waiter(i)) for i in range(1000)]
    await asyncio.sleep(0.05)
    picks: list[float] = []
    holder = "holder"
    for _ in range(1000):
        done.clear()
        t = time.perf_counter()
        sched.release(holder)  # grants the best waiter (the pick is inside release)
        picks.append(time.perf_counter() - t)
        await done.wait()
        holder = next(iter(sched._per_agent))
    await asyncio.gather(*tasks)
    sched.release(holder)
    sched.max_in_flight = rt.config.runtime.max_in_flight
    return {"fast_path": latency_summary(fast), "contended_pick_1000_queued": latency_summary(picks)}


# -- 3. CPU with 10k idle agents ------------------------------------------------------------------


def _cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


async def idle_cpu(rt: AgentRuntime, seconds: float) -> dict[str, Any]:
    async def measure(runtime: AgentRuntime) -> float:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run)
            c0, w0 = _cpu(), time.perf_counter()
            await anyio.sleep(seconds)
            c1, w1 = _cpu(), time.perf_counter()
            tg.cancel_scope.cancel()
        return (c1 - c0) / (w1 - w0) * 100

    baseline = await measure(_runtime(0))
    loaded = await measure(rt)
    return {
        "seconds": seconds,
        "cpu_percent_with_idle_agents": round(loaded, 3),
        "cpu_percent_no_agents": round(baseline, 3),
        "added_cpu_percent": round(loaded - baseline, 3),
        "live_agents_after": rt.agents.live(),
    }


# -- 4. added cost on a tools/call ---------------------------------------------------------------


def _overhead_config(folder: Path) -> Path:
    """The gateway ``call_overhead`` measures: server-everything, policy and audit off."""
    cfg_path = folder / "overhead.toml"
    cfg_path.write_text(f"""
[gateway]
data_dir = "{folder / "data-overhead"}"
log_level = "WARNING"
[security]
enforce_policies = false
audit_enabled = false
[sandbox]
code_tools = false
{everything_toml("warn")}""")
    return cfg_path


async def _timed_echo(chain: Any, principal: Principal, agent: Any, i: int) -> float:
    """One ``everything__echo`` through ``chain`` as the session agent ``agent``, its reply
    checked: the seconds it took."""
    call = CallContext(
        principal=principal,
        agent=agent.info(),
        kind="tools/call",
        target="everything__echo",
        arguments={"message": f"m{i}"},
    )
    t = time.perf_counter()
    r = await chain(call)
    dt = time.perf_counter() - t
    assert not r.is_error and r.content[0].text == f"Echo: m{i}", r
    return dt


async def _interleaved(
    chains: dict[str, Any], one: Callable[[Any, int], Awaitable[float]], calls: int, rounds: int
) -> tuple[dict[str, list[float]], list[dict[str, float]]]:
    """``calls`` calls through each chain in turn (the order reversed every other round): every
    chain's latencies, and round by round what the runtime's steps add to the p50."""
    out: dict[str, list[float]] = {"with_runtime": [], "without_runtime": []}
    per_round: list[dict[str, float]] = []
    for rnd in range(rounds):
        order = list(chains) if rnd % 2 == 0 else list(reversed(chains))
        p50s = {}
        for name in order:
            lat = [await one(chains[name], i) for i in range(calls)]
            out[name] += lat
            p50s[name] = sorted(lat)[len(lat) // 2] * 1000
        per_round.append({"added_p50_ms": round(p50s["with_runtime"] - p50s["without_runtime"], 4)})
    return out, per_round


async def call_overhead(calls: int, rounds: int, folder: Path) -> dict[str, Any]:
    from gateway.assemble import make_gateway
    from gateway.chain import build_chain
    from gateway.steps.agent import AgentStep
    from gateway.steps.schedule import ScheduleStep

    gw = make_gateway(load_config(_overhead_config(folder), {}))
    async with gw.running():
        without = [s for s in gw.steps if not isinstance(s, AgentStep | ScheduleStep)]
        chains = {
            "with_runtime": build_chain(gw.steps, gw._dispatch),
            "without_runtime": build_chain(without, gw._dispatch),
        }
        agent = gw.agents.for_session(Principal(id="bench"), "bench", "stdio")
        principal = Principal(id="bench", agent=agent.id)

        async def one(chain: Any, i: int) -> float:
            return await _timed_echo(chain, principal, agent, i)

        for chain in chains.values():  # warm-up
            for i in range(30):
                await one(chain, i)
        out, per_round = await _interleaved(chains, one, calls, rounds)
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "with_runtime": latency_summary(out["with_runtime"]),
        "without_runtime": latency_summary(out["without_runtime"]),
        "added_p50_ms_median": median([r["added_p50_ms"] for r in per_round]),
        "per_round": per_round,
    }


async def steps_only(calls: int, rounds: int) -> dict[str, Any]:
    """The runtime's two steps around an endpoint that returns at once, vs the endpoint alone:
    the pure CPU the runtime adds per call (lifecycle transitions, their events, the queue)."""
    from mcp.types import CallToolResult, TextContent

    from gateway.chain import build_chain
    from gateway.context import ToolInfo
    from gateway.steps.agent import AgentStep
    from gateway.steps.schedule import ScheduleStep

    rt = _runtime(0)
    agent = rt.agents.for_session(Principal(id="bench"), "bench", "stdio")
    principal = Principal(id="bench", agent=agent.id)
    tool = ToolInfo(name="up__echo", original_name="echo", upstream="up", definition={})
    result = CallToolResult(content=[TextContent(type="text", text="ok")])

    async def endpoint(call: CallContext) -> CallToolResult:
        return result

    chains = {
        "with_runtime": build_chain([AgentStep(rt), ScheduleStep(rt)], endpoint),
        "without_runtime": build_chain([], endpoint),
    }
    per_round = []
    for _ in range(rounds):
        p50 = {}
        for name, chain in chains.items():
            lat = []
            for _ in range(calls):
                call = CallContext(
                    principal=principal, agent=agent.info(), kind="tools/call", target="up__echo", tool=tool
                )
                t = time.perf_counter()
                await chain(call)
                lat.append(time.perf_counter() - t)
            p50[name] = sorted(lat)[len(lat) // 2] * 1000
        per_round.append(round(p50["with_runtime"] - p50["without_runtime"], 4))
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "added_p50_ms_per_round": per_round,
        "added_p50_ms_median": median(per_round),
        "events_per_call": 2,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--tiers", default="bwrap,gvisor")
    ap.add_argument("--hosted-runs", type=int, default=3)
    ap.add_argument("--skip-call", action="store_true", help="skip the end-to-end tools/call comparison")
    args = ap.parse_args()
    result: dict[str, Any] = {
        "setup": {
            "agents": args.agents,
            "real_mcp_sessions": 1,
            "simulated": f"{args.agents} session agents registered through AgentRegistry.for_session without an "
            "MCP transport each; the tools/call overhead uses one real session agent over a real "
            "upstream (server-everything); hosted agents are real sandboxed processes",
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(),
            },
        }
    }
    result["memory"] = memory_per_agent(args.agents)
    rt = _runtime(args.agents)
    result["scheduling"] = anyio.run(decisions, rt, 2000)
    result["idle_cpu"] = anyio.run(idle_cpu, rt, args.idle_s)
    with tempfile.TemporaryDirectory(prefix="symbi-bench-rt-") as tmp:
        result["runtime_steps_only"] = anyio.run(steps_only, 5000, args.rounds)
        if not args.skip_call:
            result["tools_call_overhead"] = anyio.run(call_overhead, args.calls, args.rounds, Path(tmp))
        result["hosted_start"] = {"host_baseline": host_baseline(args.hosted_runs)}
        for tier in [t for t in args.tiers.split(",") if t]:
            result["hosted_start"][tier] = hosted_start(tier, args.hosted_runs, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
