"""What a sequential audited call waits for: this tree's audit log against another revision's, interleaved.

Each round runs, for the baseline revision and for this tree (each in a fresh process, in turn):
one ``AuditLog.record`` at a time on a fresh log (the first ``--calls``, what ``bench/speed.py``'s
``sequential_call_audit_wait_ms`` sees: a log just opened) and then, after ``--warm`` more, the
same number again (a log that has been running: its WAL rewritten in place), beside the bare
append + fsync floor on the same disk, measured in the same process; then the same number as
the gateway audits a call (``flips``: an ``agent.state`` emit, 0.3 ms of upstream wait, another
emit, the awaited record); then ``--spaced`` records
``--gap-ms`` apart (calls that are not back to back: the writer idles between them); then
``--slow`` calls as in ``flips`` with ``--slow-ms`` of upstream wait (longer than the emit linger). Each phase
also reports the process CPU time and context switches per record (every thread: the caller's
and the writer's, the head signatures the writer adds when idle or flushed included). It prints JSON: per tree the
medians over rounds, and round by round this tree's median over the baseline's.

    python bench/audit_wait.py --baseline-rev cec1ea3 --rounds 5
    python bench/audit_wait.py --baseline-rev cec1ea3 --rounds 5 --dir /dev/shm/x  # no disk: the log's own overhead

The baseline's ``gateway`` package is taken with ``git archive`` into a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

WORKER = r"""
import asyncio, json, os, resource, statistics, sys, tempfile, time
from pathlib import Path
from gateway.audit import AuditLog

calls, warm, spaced, gap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4]), float(sys.argv[5]) / 1000
slow, slow_s = int(sys.argv[6]), float(sys.argv[7]) / 1000

def floor(d):
    fd = os.open(d / "floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lat = []
    for _ in range(calls):
        t = time.perf_counter(); os.write(fd, b"x" * 200); os.fsync(fd); lat.append(time.perf_counter() - t)
    os.close(fd)
    return statistics.median(lat) * 1000

def switches():
    ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return ru.ru_nvcsw + ru.ru_nivcsw

async def run(log, n, timed, pause=0.0, flips=False, upstream_s=0.0003):
    lat = []
    cpu, cs = time.process_time(), switches()  # every thread of the process: the caller's and the writer's
    for i in range(n):
        if flips:  # a call as the gateway audits it: agent-state flips around the upstream call
            log.emit("agent.state", {"agent": "alice", "from": "Ready", "to": "Running"}, principal="alice")
            await asyncio.sleep(upstream_s)
            log.emit("agent.state", {"agent": "alice", "from": "Running", "to": "Ready"}, principal="alice")
        t = time.perf_counter()
        await log.record("tool.call", {"tool": "fs__read", "arguments": {"path": "[REDACTED]"}, "i": i}, principal="alice")
        lat.append(time.perf_counter() - t)
        if pause:
            await asyncio.sleep(pause)  # calls this far apart: the writer idles between them
    log.flush()  # the head's signature, if one is still to come, counts for this phase
    cpu, cs = time.process_time() - cpu, switches() - cs
    lat.sort()
    return {
        "median_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
        "cpu_us_per_record": cpu / n * 1e6,
        "context_switches_per_record": cs / n,
    } if timed else None

with tempfile.TemporaryDirectory(dir=sys.argv[3] or None) as tmp:
    d = Path(tmp)
    log = AuditLog(d / "a.db", d / "k.pem")
    fresh = asyncio.run(run(log, calls, True))
    asyncio.run(run(log, warm, False))
    running = asyncio.run(run(log, calls, True))
    out = {"fresh": fresh, "running": running}
    out["flips"] = asyncio.run(run(log, calls, True, flips=True))
    if spaced:
        out["spaced"] = asyncio.run(run(log, spaced, True, gap))
    if slow:
        out["slow"] = asyncio.run(run(log, slow, True, flips=True, upstream_s=slow_s))
    log.close()
    print(json.dumps(out | {"fsync_floor_median_ms": floor(d)}))
"""


def baseline_tree(rev: str, into: Path) -> Path:
    blob = subprocess.run(
        ["git", "archive", rev, "gateway"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def one(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            WORKER,
            str(args.calls),
            str(args.warm),
            str(args.dir or ""),
            str(args.spaced),
            str(args.gap_ms),
            str(args.slow),
            str(args.slow_ms),
        ],
        env=env,
        cwd=tempfile.gettempdir(),  # not a worktree: PYTHONPATH alone decides which gateway runs
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


FIELDS = ("median_ms", "p99_ms", "cpu_us_per_record", "context_switches_per_record")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-rev", required=True, help="git revision whose gateway/audit is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=300, help="timed records per phase (speed.py times 300)")
    ap.add_argument("--warm", type=int, default=1200, help="records between the fresh and the running phase")
    ap.add_argument("--dir", type=Path, default=None, help="where the logs go (default: the temp dir)")
    ap.add_argument(
        "--spaced",
        type=int,
        default=60,
        help="then this many records --gap-ms apart (the CPU a record costs when calls are not back to back)",
    )
    ap.add_argument("--gap-ms", type=float, default=100.0)
    ap.add_argument(
        "--slow",
        type=int,
        default=100,
        help="then this many calls as in flips with --slow-ms of upstream wait (longer than the emit linger)",
    )
    ap.add_argument("--slow-ms", type=float, default=10.0)
    return ap.parse_args()


def tree_summary(rounds: list[dict[str, Any]], phases: tuple[str, ...]) -> dict[str, float]:
    """One tree's rounds: each phase's numbers, the floor, and what the log adds over the floor
    (each round against its own floor), medians over rounds."""

    def med(phase: str, field: str) -> float:
        return round(float(statistics.median(r[phase][field] for r in rounds)), 3)

    return {f"{phase}_{field}": med(phase, field) for phase in phases for field in FIELDS} | {
        "fsync_floor_median_ms": round(statistics.median(r["fsync_floor_median_ms"] for r in rounds), 3),
        **{
            f"{phase}_over_floor_ms": round(
                statistics.median(r[phase]["median_ms"] - r["fsync_floor_median_ms"] for r in rounds),
                3,
            )
            for phase in ("fresh", "running")
        },
    }


def main() -> None:
    args = parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"baseline": baseline_tree(args.baseline_rev, Path(tmp)), "this": ROOT}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(one(tree, args))
    result: dict[str, Any] = {
        "benchmark": "audit_wait",
        "baseline_rev": args.baseline_rev,
        "rounds": args.rounds,
    }
    phases = (
        ("fresh", "running", "flips")
        + (("spaced",) if args.spaced else ())
        + (("slow",) if args.slow else ())
    )
    for name in runs:
        result[name] = tree_summary(runs[name], phases)
    for phase in ("fresh", "running"):
        result[f"this_vs_baseline_{phase}_median_by_round"] = [
            round(t[phase]["median_ms"] / b[phase]["median_ms"], 3)
            for t, b in zip(runs["this"], runs["baseline"], strict=True)
        ]
    result["loadavg_1m"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
