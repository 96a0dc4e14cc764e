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
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import collections
import json
import tempfile
import time
from types import FrameType
from typing import Any

import anyio

from bench._common import bench_policy_data, echo_caller, echo_gateway
from gateway.app import Gateway
from gateway.logs import configure

PRINCIPAL = "bench"


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
            inclusive[f"{code.co_qualname} ({_short(code.co_filename)})"] += 1
            if area is None:
                area = _area(_short(code.co_filename))
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
            where = f"{name} ({_short(frame.f_code.co_filename)})"
            if name == "_run_once":
                self.loops += 1
        elif event == "c_call":
            where = f"{getattr(arg, '__qualname__', repr(arg))} (C)"
        else:
            return
        owner = _owner(frame if event == "c_call" else frame.f_back, self.inclusive, self.areas)
        self.by_step[owner] += 1
        self.top[owner][where] += 1


def _short(path: str) -> str:
    for marker in ("site-packages/", "/gateway/", "python3.11/", "python3.12/"):
        if marker in path:
            return ("gateway/" if marker == "/gateway/" else "") + path.split(marker, 1)[1]
    return path


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--checks-off", action="store_true", help="no policy, no audit, verification off")
    ap.add_argument("--no-count", action="store_true", help="only the CPU time (e.g. under py-spy)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="symbi-chain-ops-") as d:
        out = anyio.run(run, args, Path(d))
    out["gateway_code"] = str(Path(sys.modules["gateway"].__file__ or "").resolve().parent.parent)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
