"""Audit log benchmark: appends/s (signed, chained, durable), verifies/s, and the audit step's cost.

Run: ``/work/main/.venv/bin/python bench/audit.py [--events 20000]``; prints one JSON document.
``--baseline-tree DIR --rounds N`` runs this file against DIR's gateway and this tree's in turn,
N times each in fresh processes (base, this, base, this...; the same measurement for both), and
prints both trees' key numbers round by round with their medians.

Every rate sits beside a baseline measured in the same run, because on a shared machine a
ratio survives the noise and an absolute number does not:

* ``append``: ``AuditLog.emit`` x N then ``flush`` (every event signed, chained and committed
  with fsync, group commit of ``batch_max``), and ``AuditLog.record`` with 64 concurrent
  asyncio callers; baselines: the same rows inserted unsigned and unchained into the same
  SQLite set-up (WAL, synchronous=FULL, same batch size), and plain JSONL lines with one
  fsync per batch.
* ``verify``: ``verify_log`` with every signature checked and in fast mode (every hash and
  link, signatures at anchors / key changes / head); baseline: reading the same rows. Each is
  timed whole ``VERIFY_REPEATS`` times in turn: medians (``bench_verify``). The same full
  verification in ``verify_parallel_jobs`` processes (``verify_log(jobs=cores)``, session 15):
  ``verify_all_signatures_parallel_*``, its CPU that of this process and its workers together
  (``bench_verify_parallel``); a tree without ``jobs`` runs it in one process (jobs 1).
* ``crypto_ceiling``: bare Ed25519 sign and verify rates now (one signature per group commit,
  so no longer the bound of either number above).
* ``cpu_us_per_event``: process CPU time (every thread: the caller's and the writer's) per
  event of each of the above. On a loaded machine wall-clock rates drop with the load, CPU time
  per event far less: ``1e6 / cpu_us_per_event`` is what one idle core would do, which is how
  ``targets`` judges 50,000 appends/s (20 us per event) and 100,000 verified/s (10 us).
* ``step``: a call through ``AuditStep`` around a trivial endpoint vs the endpoint alone,
  sequential (one fsync per call) and with 64 calls in flight (group commit; at least one
  call each, so ``--calls`` under 64 still makes 64).

Any size of 1 or more runs (``--events 10 --calls 1``): every rate counts at least one event or
call over a wall time; a ratio over a CPU time per event (``*_per_cpu_s``,
``cpu_signed_vs_unsigned_sqlite``) is ``null`` if that CPU time measured 0 over a tiny run.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the repo root instead of bench/ (whose modules, e.g. bench/http.py, would shadow the stdlib);
# BENCH_GATEWAY_TREE: another checkout's gateway measured by this file (--baseline-tree)
sys.path[0] = os.environ.get("BENCH_GATEWAY_TREE") or str(Path(__file__).resolve().parents[1])

from gateway.audit import (
    AuditLog,
    exported_public_keys,
    store,
    verify_log,
)
from gateway.audit.record import canonical_details
from gateway.chain import build_chain
from gateway.config.sections import AuditSection
from gateway.context import CallContext, Decision, Principal
from gateway.steps.audit import AuditStep

DEFAULTS = AuditSection()  # the shipped [audit] settings: batch_max, checkpoint_every
BATCH = DEFAULTS.batch_max


def _details(i: int) -> dict[str, Any]:
    return {
        "tool": "fs__read_file",
        "upstream": "fs",
        "arguments": {"path": "[REDACTED]"},
        "decision": {"allow": True, "reasons": ["ok"], "conditions": {"sandbox_tier": "none"}},
        "outcome": "ok",
        "duration_ms": 1.234,
        "result_bytes": 512,
        "i": i,
    }


def _cpu_us(cpu0: float, n: int) -> float:
    return (time.process_time() - cpu0) / max(1, n) * 1e6


def _ratio(num: float, den: float) -> float | None:
    """``num / den``; ``None`` (null in the JSON) when the CPU time ``den`` measured 0: a tiny
    run can be shorter than a CPU clock's step (rusage's, a VM's), and a missing ratio says so
    where a made-up one would not."""
    return num / den if den else None


def _at_least(value: float | None, target: float) -> bool | None:
    """Whether a rate meets its target; ``None`` when the rate could not be measured."""
    return None if value is None else value >= target


def _positive(text: str) -> int:
    """An argparse count of 1 or more: nothing measured has no rate."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: at least 1")
    return n


def bench_append(d: Path, n: int) -> dict[str, float]:
    log = AuditLog(d / "a.db", d / "key.pem", batch_max=BATCH, checkpoint_every=DEFAULTS.checkpoint_every)
    t, c = time.perf_counter(), time.process_time()
    for i in range(n):
        log.emit("tool.call", _details(i), principal="alice", agent="agent-1")
    log.flush()
    emit_rate = n / (time.perf_counter() - t)
    emit_cpu = _cpu_us(c, n)

    async def concurrent(m: int, width: int = 64) -> None:
        async def worker(w: int) -> None:
            for i in range(w, m, width):
                await log.record("tool.call", _details(i), principal="alice")

        await asyncio.gather(*(worker(w) for w in range(width)))

    m = max(2000, n // 4)
    t, c = time.perf_counter(), time.process_time()
    asyncio.run(concurrent(m))
    record_rate = m / (time.perf_counter() - t)
    record_cpu = _cpu_us(c, m)
    log.close()
    return {
        "signed_emit_per_s": emit_rate,
        "signed_record_64_concurrent_per_s": record_rate,
        "signed_emit_cpu_us_per_event": emit_cpu,
        "signed_record_64_concurrent_cpu_us_per_event": record_cpu,
    }


def bench_baseline_sqlite(d: Path, n: int) -> tuple[float, float]:
    """Rate and CPU us per event of the same rows unsigned and unchained, same SQLite set-up."""
    conn = store.open_writer(d / "plain.db")
    t, c = time.perf_counter(), time.process_time()
    rows = []
    for i in range(n):
        rows.append(
            (
                i + 1,
                str(uuid.uuid4()),
                time.time_ns(),
                "alice",
                "agent-1",
                "tool.call",
                canonical_details(_details(i)),
                "",
                "",
                "",
                "",
            )
        )
        if len(rows) == BATCH or i == n - 1:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(store.INSERT, rows)
            conn.execute("COMMIT")
            rows.clear()
    rate = n / (time.perf_counter() - t)
    cpu = _cpu_us(c, n)
    conn.close()
    return rate, cpu


def bench_baseline_jsonl(d: Path, n: int) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    with open(d / "plain.jsonl", "a", encoding="utf-8") as f:
        buf = []
        for i in range(n):
            buf.append(
                json.dumps(
                    {
                        "seq": i + 1,
                        "id": str(uuid.uuid4()),
                        "ts_ns": time.time_ns(),
                        "type": "tool.call",
                        "details": _details(i),
                    }
                )
                + "\n"
            )
            if len(buf) == BATCH or i == n - 1:
                f.write("".join(buf))
                f.flush()
                os.fsync(f.fileno())
                buf.clear()
    return n / (time.perf_counter() - t), _cpu_us(c, n)


VERIFY_REPEATS = 5


def _read_rows(path: Path) -> int:
    conn = store.open_reader(path)
    try:
        return sum(1 for _ in conn.execute(f"SELECT {store.COLUMNS} FROM events ORDER BY seq"))
    finally:
        conn.close()


def _jobs() -> int:
    """Processes for the parallel verification: this machine's cores; 1 when the measured
    tree's ``verify_log`` has no ``jobs`` (a baseline from before session 15)."""
    if "jobs" not in inspect.signature(verify_log).parameters:
        return 1
    return len(os.sched_getaffinity(0))


def _cpu_all() -> float:
    """CPU seconds of this process (every thread) and of its waited-for children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_verify_parallel(d: Path, repeats: int = VERIFY_REPEATS) -> dict[str, float]:
    """``verify_log(jobs=cores)`` with every signature, timed whole ``repeats`` times: the median
    wall-clock rate and CPU per event of this process and its workers together (the workers
    are waited for by the pool's shutdown inside the call, so their CPU is counted)."""
    jobs = _jobs()
    keys = exported_public_keys(d / "key.pem")
    timed = []
    for _ in range(repeats):
        t, c = time.perf_counter(), _cpu_all()
        if jobs > 1:
            res = verify_log(d / "a.db", keys, all_signatures=True, jobs=jobs).check()
        else:  # no jobs argument: a baseline tree older than it still runs this
            res = verify_log(d / "a.db", keys, all_signatures=True).check()
        pids = getattr(res, "worker_pids", ())  # a baseline tree's result has none: one process
        timed.append((res.events, time.perf_counter() - t, _cpu_all() - c, len(set(pids)) or 1))
    cpu = [c / n * 1e6 for n, _, c, _ in timed]
    return {
        "verify_parallel_jobs": jobs,
        "verify_parallel_processes": min(p for *_, p in timed),
        "verify_all_signatures_parallel_per_s": statistics.median(n / w for n, w, _, _ in timed),
        "verify_all_signatures_parallel_cpu_us_per_event": statistics.median(cpu),
        "verify_all_signatures_parallel_cpu_us_per_event_min": min(cpu),
        "verify_all_signatures_parallel_cpu_share": statistics.median(c / w for _, w, c, _ in timed),
    }


def bench_verify(d: Path, repeats: int = VERIFY_REPEATS) -> dict[str, float]:
    """``verify_log`` with every signature, in fast mode, and reading the rows alone, each timed
    whole ``repeats`` times in turn (full, fast, read, full...) in this process: medians.

    One timing of each swung 2x from run to run on this shared 2-core machine (the scheduler: the
    wall time of a CPU-bound loop follows the other processes' load), and the first call also
    pays a one-time import (``verify_log`` imports ``gateway.audit.archives`` on first use) that
    only the full mode, timed first, carried. Every call is timed and kept: the median of each
    part is reported with its fastest CPU time and ``cpu_share`` (thread CPU over wall time: below
    ~0.9 the machine's load, not the verifier, set the wall-clock rate). CPU is the calling
    thread's (``thread_time``): verification runs on it alone.
    """
    keys = exported_public_keys(d / "key.pem")
    parts: dict[str, Callable[[], int]] = {
        "verify_all_signatures": lambda: verify_log(d / "a.db", keys, all_signatures=True).check().events,
        "verify_fast": lambda: verify_log(d / "a.db", keys, all_signatures=False).check().events,
        "baseline_read_rows": lambda: _read_rows(d / "a.db"),
    }
    runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, part in parts.items():
            t, c = time.perf_counter(), time.thread_time()
            n = part()
            runs[name].append((n, time.perf_counter() - t, time.thread_time() - c))
    out: dict[str, float] = {"events": runs["baseline_read_rows"][0][0], "repeats": repeats}
    for name, timed in runs.items():
        cpu = [c / n * 1e6 for n, _, c in timed]
        out[f"{name}_per_s"] = statistics.median(n / w for n, w, _ in timed)
        out[f"{name}_cpu_us_per_event"] = statistics.median(cpu)
        out[f"{name}_cpu_us_per_event_min"] = min(cpu)
        out[f"{name}_cpu_share"] = statistics.median(c / w for _, w, c in timed)
    return out


def bench_fsync_floor(d: Path, n: int = 300) -> float:
    """Median ms of one small append + ``os.fsync`` in ``d``: what any durable acknowledgement
    costs on this disk, the floor under ``audited_call_median_ms``."""
    lat = []
    fd = os.open(d / "fsync-floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
    return statistics.median(lat)


def bench_step(d: Path, calls: int) -> dict[str, float]:
    log = AuditLog(d / "s.db", d / "skey.pem", batch_max=BATCH, checkpoint_every=DEFAULTS.checkpoint_every)

    async def endpoint(call: CallContext) -> str:
        call.decision = Decision(allow=True)
        call.audit_arguments = {"path": "[REDACTED]"}
        return "ok"

    def ctx() -> CallContext:
        return CallContext(
            principal=Principal(id="alice"),
            kind="tools/call",
            target="fs__read",
            arguments={"path": "/etc/hosts"},
        )

    async def sequential(handler: Any) -> list[float]:
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            await handler(ctx())
            lat.append((time.perf_counter() - t) * 1000)
        return lat

    async def concurrent(handler: Any, width: int = 64) -> float:
        each = max(1, calls // width)  # every caller in flight at least once

        async def worker() -> None:
            for _ in range(each):
                await handler(ctx())

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(width)))
        return each * width / (time.perf_counter() - t)

    with_step = build_chain([AuditStep(log)], endpoint)
    bare = build_chain([], endpoint)
    seq_bare = statistics.median(asyncio.run(sequential(bare)))
    seq_step = statistics.median(asyncio.run(sequential(with_step)))
    conc_bare = asyncio.run(concurrent(bare))
    conc_step = asyncio.run(concurrent(with_step))
    log.close()
    return {
        "bare_call_median_ms": seq_bare,
        "audited_call_median_ms": seq_step,
        "added_median_ms_sequential": seq_step - seq_bare,
        "bare_calls_per_s_64_concurrent": conc_bare,
        "audited_calls_per_s_64_concurrent": conc_step,
        "added_ms_per_call_64_concurrent": 1000 / conc_step - 1000 / conc_bare,
    }


def bench_crypto(n: int = 5000) -> dict[str, float]:
    """The ceiling: bare Ed25519 sign / verify on this machine now (one core, no I/O)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    msg = bytes(32)
    t = time.perf_counter()
    for _ in range(n):
        sig = key.sign(msg)
    sign = n / (time.perf_counter() - t)
    pub = key.public_key()
    t = time.perf_counter()
    for _ in range(n):
        pub.verify(sig, msg)
    return {"ed25519_sign_per_s": sign, "ed25519_verify_per_s": n / (time.perf_counter() - t)}


def targets(append: dict[str, float], verify: dict[str, float]) -> dict[str, Any]:
    """Issue 16's audit targets, on the wall clock now and per CPU-second (one idle core)."""
    per_cpu_s = {
        "append": _ratio(1e6, append["signed_emit_cpu_us_per_event"]),
        "verify_all_signatures": _ratio(1e6, verify["verify_all_signatures_cpu_us_per_event"]),
    }
    return {
        "append_per_s": 50000,
        "verify_per_s": 100000,
        "append_met": append["signed_emit_per_s"] >= 50000,
        "verify_all_signatures_met": verify["verify_all_signatures_per_s"] >= 100000,
        "append_per_cpu_s": per_cpu_s["append"],
        "verify_all_signatures_per_cpu_s": per_cpu_s["verify_all_signatures"],
        "append_met_per_cpu_s": _at_least(per_cpu_s["append"], 50000),
        "verify_all_signatures_met_per_cpu_s": _at_least(per_cpu_s["verify_all_signatures"], 100000),
        "verify_parallel_jobs": verify["verify_parallel_jobs"],
        "verify_all_signatures_parallel_met": verify["verify_all_signatures_parallel_per_s"] >= 100000,
    }


# what --baseline-tree compares, as (section, key)
COMPARED = (
    ("append", "signed_emit_per_s"),
    ("append", "signed_emit_cpu_us_per_event"),
    ("append", "signed_record_64_concurrent_per_s"),
    ("append", "signed_record_64_concurrent_cpu_us_per_event"),
    ("append", "baseline_unsigned_sqlite_per_s"),
    ("verify", "verify_all_signatures_per_s"),
    ("verify", "verify_all_signatures_cpu_us_per_event"),
    ("verify", "verify_all_signatures_cpu_us_per_event_min"),
    ("verify", "verify_all_signatures_cpu_share"),
    ("verify", "baseline_read_rows_cpu_us_per_event"),
    ("verify", "verify_parallel_jobs"),
    ("verify", "verify_all_signatures_parallel_per_s"),
    ("verify", "verify_all_signatures_parallel_cpu_us_per_event"),
    ("verify", "verify_all_signatures_parallel_cpu_share"),
    ("step", "added_median_ms_sequential"),
    ("step", "fsync_floor_median_ms"),
)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Both trees' gateways measured by this file, alternated in fresh processes."""
    here = Path(__file__).resolve().parents[1]
    trees = {"baseline": Path(args.baseline_tree).resolve(), "this": here}
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            # this file measures both trees' gateways: the same measurement for both
            cmd = [sys.executable, str(Path(__file__).resolve()), "--events", str(args.events)]
            cmd += ["--calls", str(args.calls)] + (["--dir", str(args.dir)] if args.dir else [])
            env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_GATEWAY_TREE": str(tree)}
            out = subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True, text=True).stdout
            runs[name].append(json.loads(out))
    result: dict[str, Any] = {"benchmark": "audit-compare", "baseline_tree": str(trees["baseline"])}
    result["rounds"] = args.rounds
    result["loadavg_1m"] = os.getloadavg()[0]
    for section, key in COMPARED:
        for name in trees:
            values = [r[section][key] for r in runs[name]]
            result[f"{name}_{key}"] = {"median": statistics.median(values), "rounds": values}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=_positive, default=20000)
    ap.add_argument("--calls", type=_positive, default=1024)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--baseline-tree", type=Path, default=None, help="a checkout to compare against")
    ap.add_argument("--rounds", type=_positive, default=3, help="alternations with --baseline-tree")
    args = ap.parse_args()
    if args.dir is not None:  # made here, once: each round's child takes a temp dir inside it
        args.dir.mkdir(parents=True, exist_ok=True)
    if args.baseline_tree is not None:
        res = compare(args)
        print(json.dumps(res, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else str(x)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        d = Path(tmp)
        append = bench_append(d, args.events)
        base_sqlite, base_sqlite_cpu = bench_baseline_sqlite(d, args.events)
        base_jsonl, base_jsonl_cpu = bench_baseline_jsonl(d, args.events)
        verify = {**bench_verify(d), **bench_verify_parallel(d)}
        step = bench_step(d, args.calls)
        step["fsync_floor_median_ms"] = bench_fsync_floor(d)
        crypto = bench_crypto()
    result = {
        "benchmark": "audit",
        "gateway_tree": sys.path[0],
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
            "loadavg_1m": os.getloadavg()[0],
        },
        "events": args.events,
        "append": {
            **append,
            "baseline_unsigned_sqlite_per_s": base_sqlite,
            "baseline_unsigned_jsonl_per_s": base_jsonl,
            "baseline_unsigned_sqlite_cpu_us_per_event": base_sqlite_cpu,
            "baseline_unsigned_jsonl_cpu_us_per_event": base_jsonl_cpu,
            "signed_vs_unsigned_sqlite": append["signed_emit_per_s"] / base_sqlite,
            "signed_vs_unsigned_jsonl": append["signed_emit_per_s"] / base_jsonl,
            "cpu_signed_vs_unsigned_sqlite": _ratio(append["signed_emit_cpu_us_per_event"], base_sqlite_cpu),
        },
        "verify": {
            **verify,
            "fast_vs_read": verify["verify_fast_per_s"] / verify["baseline_read_rows_per_s"],
            "all_signatures_vs_read": verify["verify_all_signatures_per_s"]
            / verify["baseline_read_rows_per_s"],
        },
        "step": step,
        "crypto_ceiling": {
            **crypto,
            "signed_append_vs_bare_sign": append["signed_emit_per_s"] / crypto["ed25519_sign_per_s"],
            "full_verify_vs_bare_verify": verify["verify_all_signatures_per_s"]
            / crypto["ed25519_verify_per_s"],
        },
        "targets": targets(append, verify),
    }
    print(json.dumps(result, indent=2, default=lambda x: round(x, 3) if isinstance(x, float) else str(x)))


if __name__ == "__main__":
    main()
