"""The call chain's own work per ``tools/call``, step by step: operation counts, not timings,
so they are the same on a busy machine and an idle one.

    .venv/bin/python bench/chain_ops.py [--calls 300] [--checks-off] [--top 12]

The whole gateway as ``make_gateway`` assembles it, in this process, in front of
server-everything over stdio (as bench/decisions.py): by default the secure path of
bench/speed.py's ``gateway_secure`` (``policies.rego`` with the bench principal as a developer,
signed audit log, ``tofu`` verification); ``--checks-off`` as ``gateway_off`` (no policy, no
audit, verification off). Calls made as the stdio front makes them (``Gateway.call`` with the
caller's agent), after 30 warm-up calls. Every Python and C function call on the event loop's
thread is counted by ``sys.setprofile`` over ``--calls`` sequential calls (the audit writer's
thread and the upstream process are not counted) and given to the innermost chain step on its
stack (``gateway/steps/*.__call__``), to the endpoint (``Gateway._dispatch``) or to ``other``
(the event loop, the upstream reader task). Also the event-loop iterations (``_run_once``),
and, before counting, the event loop thread's CPU time per call over another ``--calls``
calls (``loop_thread_cpu_us``: noisy on a shared machine; the counts are not). Logging is set
up as ``symbi`` sets it up (the checks-off path's warnings go to stderr).

JSON on stdout: per call ``function_calls``, ``loop_iterations``, ``by_step`` and each step's
``top`` functions, and ``by_area`` (each call given to the innermost gateway
module on the stack: ``gateway/policy``, ``gateway/audit``, ``gateway/steps/resolve.py``...).
Run it with ``PYTHONPATH=<another checkout>`` to count that checkout's code.

``--front``: the whole stdio path instead, as a client sees it: ``symbi mcp`` (secure, or
``--checks-off``) in its own process, an SDK client over stdio, every call on the gateway's
event-loop thread counted (the front, the fast lanes, the SERVER span, the chain, the upstream
hop, the transports and the loop) and given to the innermost gateway function on the stack
(``by_function``) and its module (``by_area``). Counting starts and stops on SIGUSR1 / SIGUSR2
after the warm-up, so start-up is not in it. ``function_calls_per_call_work`` leaves out the
loops that wake on a timer (``background_loops``: the runtime's sweep, the approvals poll),
whose share per call moves with the machine's load. ``--front --cprofile``: cProfile over the
same calls instead, its top functions per call by own time and by number of calls.
``--front --gc``: the garbage collector's runs over the same calls instead (no profiler):
collections per generation, their pauses in CPU time, what survived by type, the cyclic
garbage left (by type; a function by its name), the cost of one full collection, the
thresholds and what is frozen. ``--front --strace``: the gateway process's system calls per
call (``strace -c -f`` attached after the warm-up: every thread of it, not the upstream's).
``--front --tail``: the calls' latencies (client side) against a timeline of what ran beside
them in the gateway (collections, event-loop callbacks from ``--tail-slow-us`` long with their
CPU time and the policy's and pipe writes' share of it, the audit writer's commits, WAL
checkpoints, head seals and checkpoint files): per kind, how often and how long, and the share
of all calls and of the slowest 1 % it overlapped; the slowest calls with what overlapped each.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import collections
import json
import os
import runpy
import signal
import tempfile
import time
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any

import anyio

from bench._common import bench_policy_data, echo_caller, echo_gateway, text_of
from gateway.app import Gateway
from gateway.logs import configure

PRINCIPAL = "bench"
REPO = Path(__file__).resolve().parent.parent


# this checkout's bench/_sibling.py by its path: an older checkout named by PYTHONPATH has none
sibling: Callable[[str], ModuleType] = runpy.run_path(str(REPO / "bench" / "_sibling.py"))["sibling"]


if TYPE_CHECKING:
    import bench._chain_ops_front as front_modes
    import bench._tail_watch as tail_modes
else:
    front_modes = sibling("_chain_ops_front")
    tail_modes = sibling("_tail_watch")


def _owner(
    frame: FrameType | None, inclusive: collections.Counter[str], areas: collections.Counter[str]
) -> str:
    """The innermost chain step (or the endpoint) on ``frame``'s stack; every gateway function
    on the stack (once each) is counted in ``inclusive``, the innermost one's part of the
    gateway (``gateway/policy``, ``gateway/steps/audit.py``...) in ``areas``."""
    owner = None
    area = None
    seen: set[Any] = set()
    while frame is not None:
        code = frame.f_code
        if "/gateway/" in code.co_filename and code not in seen:
            seen.add(code)
            inclusive[f"{code.co_qualname} ({tail_modes.short(code.co_filename)})"] += 1
            if area is None:
                area = _area(tail_modes.short(code.co_filename))
        if owner is None:
            if code.co_name == "__call__" and "/gateway/steps/" in code.co_filename:
                owner = type(frame.f_locals.get("self")).__name__
            elif code.co_name == "_dispatch" and code.co_filename.endswith("/gateway/app.py"):
                owner = "endpoint (Gateway._dispatch)"
        frame = frame.f_back
    areas[area or "outside the gateway (event loop)"] += 1
    return owner or "other (event loop, reader tasks)"


def _area(path: str) -> str:
    parts = path.split("/")
    return "/".join(parts[:3]) if len(parts) > 2 and parts[1] == "steps" else "/".join(parts[:2])


class Counter:
    def __init__(self) -> None:
        self.by_step: collections.Counter[str] = collections.Counter()
        self.top: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.loops = 0
        self.inclusive: collections.Counter[str] = collections.Counter()
        self.areas: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            name = frame.f_code.co_name
            where = f"{name} ({tail_modes.short(frame.f_code.co_filename)})"
            if name == "_run_once":
                self.loops += 1
        elif event == "c_call":
            where = f"{getattr(arg, '__qualname__', repr(arg))} (C)"
        else:
            return
        owner = _owner(frame if event == "c_call" else frame.f_back, self.inclusive, self.areas)
        self.by_step[owner] += 1
        self.top[owner][where] += 1


async def measure(gw: Gateway, calls: int, top: int, count: bool = True) -> dict[str, Any]:
    _, call = echo_caller(gw, PRINCIPAL)

    for i in range(30):
        await call(i)
    cpu = time.thread_time()
    for i in range(calls):
        await call(i)
    cpu_us = (time.thread_time() - cpu) * 1e6 / calls
    if not count:
        return {"loop_thread_cpu_us": round(cpu_us, 1)}
    counter = Counter()
    sys.setprofile(counter)
    try:
        for i in range(calls):
            await call(i)
    finally:
        sys.setprofile(None)
    total = sum(counter.by_step.values())
    return {
        "loop_thread_cpu_us": round(cpu_us, 1),
        "function_calls": round(total / calls, 1),
        "loop_iterations": round(counter.loops / calls, 2),
        "by_step": {k: round(v / calls, 1) for k, v in counter.by_step.most_common()},
        "top": {
            k: {f: round(n / calls, 2) for f, n in counter.top[k].most_common(top)}
            for k, _ in counter.by_step.most_common()
        },
        "by_area": {k: round(v / calls, 1) for k, v in counter.areas.most_common()},
        "gateway_inclusive": {f: round(n / calls, 1) for f, n in counter.inclusive.most_common(4 * top)},
    }


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    data = None if args.checks_off else bench_policy_data(tmp, PRINCIPAL)
    configure("WARNING")  # as the CLI does (gateway.cli.setup_logging): warnings go to stderr
    async with echo_gateway(tmp, PRINCIPAL, security=not args.checks_off, policy_data=data) as gw:
        result = await measure(gw, args.calls, args.top, not args.no_count)
    return {
        "benchmark": "chain_ops",
        "settings": {"calls": args.calls, "checks_off": args.checks_off},
        "steps": [type(s).__name__ for s in gw.steps],
        **result,
    }


# loops that wake on a timer, not per call: their share per call depends on the calls' pace
BACKGROUND = (
    "AgentRuntime.run (gateway/runtime/core.py)",
    "poll_approvals.<locals>.run (gateway/tasks.py)",
    "BusBuiltin.run (gateway/bus/builtin.py)",
)


def _per_call(value: Any, n: int) -> Any:
    if isinstance(value, dict):
        return {k: _per_call(v, n) for k, v in value.items()}
    return round(value / n, 2)


def _read(path: Path) -> str:
    """A small file's text ("" while it does not exist): read between calls, not during them."""
    return path.read_text() if path.exists() else ""


async def _echo_calls(session: Any, calls: int) -> list[tuple[int, int]]:
    """``calls`` sequential echo calls; each one's start and end (``time.monotonic_ns``)."""
    times = []
    for i in range(calls):
        began = time.monotonic_ns()
        r = await session.call_tool("everything__echo", {"message": f"m{i}"})
        times.append((began, time.monotonic_ns()))
        if text_of(r) != f"Echo: m{i}":
            raise RuntimeError(f"unexpected reply {r}")
    return times


def _front_command(args: argparse.Namespace, tmp: Path) -> tuple[list[str], Path, Path]:
    """The counted ``symbi mcp`` command (under callgrind with ``--callgrind``), the file its
    counts go to and the file its pid goes to."""
    from bench._common import everything_toml, write_gateway_config

    servers = everything_toml("off" if args.checks_off else "tofu")
    extra = '[mcp]\ntool_verification = "off"\n' if args.checks_off else ""
    if args.callgrind:  # counters are per process: the timer loops' wake-ups (per wall second) left out
        extra = (extra or "[mcp]\n") + front_modes.QUIET_TIMERS
    data = None if args.checks_off else bench_policy_data(tmp, PRINCIPAL)
    cfg = write_gateway_config(
        tmp / "gw", servers, security=not args.checks_off, principal=PRINCIPAL, policy_data=data, extra=extra
    )
    out = tmp / "counts.json"
    pid_file = tmp / "pid"
    # this file by its path (it loads its front modes by theirs): the gateway code is whichever
    # PYTHONPATH names (another checkout's)
    code = (
        "import os, sys, importlib.util as u; "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
        f"s = u.spec_from_file_location('chain_ops', {__file__!r}); m = u.module_from_spec(s); "
        f"s.loader.exec_module(m); m.front_modes.serve_counted({str(out)!r}, sys.argv[1:], "
        f"{args.cprofile!r}, {args.gc!r}, {args.callgrind!r}, {args.tail!r}, {args.tail_slow_us!r})"
    )
    # -P: without it ``-c`` puts the working directory first on sys.path, and a run from one
    # checkout with PYTHONPATH naming another counted the working directory's gateway
    command = [sys.executable, "-P", "-c", code, "mcp", "--config", str(cfg)]
    if args.callgrind:
        command = [*front_modes.callgrind_argv(tmp / "callgrind.out"), *command]
    return command, out, pid_file


async def front(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The whole stdio path, as ``symbi mcp`` serves an SDK client: counted in the gateway's
    own process over ``--calls`` sequential calls after 30 warm-up calls."""
    from bench._common import gateway_env, stdio_session

    command, out, pid_file = _front_command(args, tmp)
    env = {
        **gateway_env(),
        "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO),
    }
    async with stdio_session(command[0], command[1:], env) as s:
        pid = int(pid_file.read_text())
        for i in range(30):
            await s.call_tool("everything__echo", {"message": f"w{i}"})
        if args.strace:
            with front_modes.Strace(pid, tmp / "strace.txt") as traced:
                await _echo_calls(s, args.calls)
            return {
                "benchmark": "chain_ops --front --strace",
                "settings": {"calls": args.calls, "checks_off": args.checks_off},
                "syscalls_per_call": traced.per_call(args.calls),
            }
        os.kill(pid, signal.SIGUSR1)
        times = await _echo_calls(s, args.calls)
        os.kill(pid, signal.SIGUSR2)
        for _ in range(100):
            if _read(out):
                break
            await anyio.sleep(0.05)
    raw = json.loads(_read(out))
    if args.tail and args.tail_raw:  # the timeline and the calls' times, for a reading of one's own
        args.tail_raw.write_text(json.dumps({"calls": times, **raw}))
    if args.tail:
        return {
            "benchmark": "chain_ops --front --tail",
            "settings": {"calls": args.calls, "checks_off": args.checks_off},
            **tail_modes.tail_tables(times, raw["events"], args.top),
            "long_callback_stacks": raw.get("long_callback_stacks", {}),
        }
    return _front_result(args, tmp, raw)


def _front_result(args: argparse.Namespace, tmp: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``front``'s JSON from what the counted process wrote (``raw``), per call."""
    n = args.calls
    settings = {"calls": n, "checks_off": args.checks_off}
    if args.gc:
        return {"benchmark": "chain_ops --front --gc", "settings": settings, **raw}
    if args.callgrind:
        return {
            "benchmark": "chain_ops --front --callgrind",
            "settings": settings,
            "per_call": front_modes.callgrind_window(tmp / "callgrind.out", n),
        }
    if args.cprofile:
        return {
            "benchmark": "chain_ops --front --cprofile",
            "settings": settings,
            **front_modes.profile_tables(str(tmp / "counts.json") + ".pstats", n, args.top),
        }
    scale = {k: _per_call(v, n) for k, v in raw.items()}
    background = sum(scale["gateway_inclusive"].get(k, 0) for k in BACKGROUND)
    scale["background_loops"] = round(background, 1)  # in function_calls; not the call's own work
    scale["function_calls_per_call_work"] = round(scale["function_calls"] - background, 1)
    return {"benchmark": "chain_ops --front", "settings": settings, **scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--checks-off", action="store_true", help="no policy, no audit, verification off")
    ap.add_argument("--no-count", action="store_true", help="only the CPU time (e.g. under py-spy)")
    ap.add_argument(
        "--front", action="store_true", help="the whole `symbi mcp` process, SDK client over stdio"
    )
    ap.add_argument(
        "--cprofile",
        action="store_true",
        help="with --front: cProfile's top functions (own time, calls) instead of the counts",
    )
    ap.add_argument(
        "--strace",
        action="store_true",
        help="with --front: the gateway process's system calls per call (strace -c -f)",
    )
    ap.add_argument(
        "--gc",
        action="store_true",
        help="with --front: the garbage collector's runs and pauses over the calls (no profiler)",
    )
    ap.add_argument(
        "--tail",
        action="store_true",
        help="with --front: the calls' latencies against a timeline of what ran beside them "
        "(collections, slow event-loop callbacks, the audit writer's commits and checkpoints)",
    )
    ap.add_argument(
        "--tail-slow-us",
        type=int,
        default=500,
        help="with --tail: event-loop callbacks from this long (0: all)",
    )
    ap.add_argument(
        "--tail-raw", type=Path, default=None, help="with --tail: also write the raw timeline here"
    )
    ap.add_argument(
        "--callgrind",
        action="store_true",
        help="with --front: the gateway under valgrind's callgrind: instructions and simulated "
        "cache misses per call (slow: start-up takes minutes)",
    )
    args = ap.parse_args()
    if args.front:
        with tempfile.TemporaryDirectory(prefix="symbi-chain-ops-") as d:
            out = anyio.run(front, args, Path(d))
        out["gateway_code"] = os.environ.get("PYTHONPATH") or str(REPO)
        print(json.dumps(out, indent=2))
        return
    with tempfile.TemporaryDirectory(prefix="symbi-chain-ops-") as d:
        out = anyio.run(run, args, Path(d))
    # this checkout's helper: an older checkout's bench._common may not have it
    out["gateway_code"] = sibling("_common").loaded_gateway_tree()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
