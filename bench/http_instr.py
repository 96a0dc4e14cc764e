"""Instructions per streamable-HTTP tools/call of ``symbi serve`` (callgrind), beside a baseline tree.

    PYTHONPATH=$PWD .venv/bin/python bench/http_instr.py --baseline-tree DIR [--json-response]
                                                         [--seconds 25] [--sessions 1]

The gateways of ``bench/http_load.py`` (API key per session, the repo's policy, signed audit
log, tofu, server-everything over stdio; this checkout's and ``--baseline-tree``'s, SSE
answers, or JSON with ``--json-response``) run under ``valgrind --tool=callgrind
--separate-threads=yes``, instrumented only while measured (``callgrind_control -i on``): one
wrk session (``--sessions``) calls ``echo`` for ``--seconds``; printed per call are the
instructions of the event-loop thread (under load the gateway's bottleneck: it runs every
call's Python) and of every thread; then the same window without load, per second (timers,
polls: what the per-call figures carry besides the calls). Instruction counts do not follow
the machine's load or clock, so a few percent shows where wrk's calls/s cannot (session 23:
one target's rounds varied 0.7-1.4x). Under valgrind a call takes 40-70 ms: SSE calls near
``HOLD_S`` (50 ms) get the slow-call watch at random (compare SSE runs at similar p50; JSON
has no watch). Each gateway runs as ``python -P -m gateway`` (without ``-P`` the working
directory's ``gateway`` would shadow the tree's). Needs valgrind; ~5 minutes a pair.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the stdlib's http: import from the repo root instead of bench/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from typing import Any

import bench.http_load as http_load
from bench.http_load import Target, drive, targets


def _ctl(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, timeout=300, check=False)


def _counted(out: Path, pid: int) -> tuple[int, int]:
    """Instructions of the dumps of ``pid`` in ``out`` (then removed): the event-loop thread's
    (``-01``) and every thread's."""
    main = every = 0
    for f in out.glob(f"cg.{pid}.out*"):
        got = 0
        for line in f.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                got = max(got, int(line.split()[1]))
        every += got
        if f.name.endswith("-01"):
            main = got
        f.unlink()
    return main, every


def measure(t: Target, out: Path, tmp: Path, sessions: int, seconds: float) -> dict[str, Any]:
    """One gateway: the loaded window, then an idle one of half its length."""
    _counted(out, t.pid)  # what an earlier dump left
    _ctl(t.pid, "-z")
    _ctl(t.pid, "-i", "on")
    row = drive(t, sessions, 1, seconds, "measured", "wrk", tmp)
    _ctl(t.pid, "-i", "off")
    _ctl(t.pid, "-d", "measured")
    time.sleep(2)
    main, every = _counted(out, t.pid)
    _ctl(t.pid, "-z")
    _ctl(t.pid, "-i", "on")
    start = time.monotonic()
    time.sleep(seconds / 2)
    idle_s = time.monotonic() - start
    _ctl(t.pid, "-i", "off")
    _ctl(t.pid, "-d", "idle")
    time.sleep(2)
    idle_main, idle_every = _counted(out, t.pid)
    calls = row["calls"]
    return {
        "calls": calls,
        "p50_ms": row.get("p50_ms"),
        "misrouted": row.get("misrouted"),
        "errors": row.get("errors"),
        "loop_thread_ir_per_call": round(main / calls) if calls else None,
        "all_threads_ir_per_call": round(every / calls) if calls else None,
        "idle_loop_thread_ir_per_s": round(idle_main / idle_s),
        "idle_all_threads_ir_per_s": round(idle_every / idle_s),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--baseline-tree", type=Path, required=True, help="the checkout to compare with")
    ap.add_argument("--json-response", action="store_true", help="the JSON-answering gateways instead of SSE")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--sessions", type=int, default=1)
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print(json.dumps({"error": "valgrind (callgrind_control) is not installed"}))
        return 1
    load_args = http_load._parser().parse_args(
        ["--no-mcp-proxy", "--no-sdk-target", "--baseline-tree", str(args.baseline_tree)]
        + (["--json-response"] if args.json_response else [])
    )
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        out = tmp / "callgrind"
        out.mkdir()
        wrapper = tmp / "symbi-under-callgrind"
        wrapper.write_text(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes "
            f'--callgrind-out-file={out}/cg.%p.out "{sys.executable}" -P -m gateway "$@"\n'
        )
        wrapper.chmod(0o700)
        vars(http_load)["SYMBI"] = wrapper  # targets() starts every gateway through it
        want = (
            ("gateway-json", "gateway-json-baseline")
            if args.json_response
            else ("gateway", "gateway-baseline")
        )
        results: dict[str, Any] = {}
        with targets(load_args, tmp) as ts:
            gateways = [t for t in ts if t.name in want]
            for t in gateways:
                drive(t, args.sessions, 1, 4.0, "warm", "wrk", tmp)
            for t in gateways:
                results[t.name] = measure(t, out, tmp, args.sessions, args.seconds)
                print(t.name, results[t.name], file=sys.stderr, flush=True)
    new, base = results[want[0]], results[want[1]]
    ratios = {
        k: round(new[k] / base[k], 3) if new[k] and base[k] else None
        for k in ("loop_thread_ir_per_call", "all_threads_ir_per_call")
    }
    print(
        json.dumps(
            {"benchmark": "http_instr (callgrind)", "results": results, "vs_baseline_tree": ratios}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
