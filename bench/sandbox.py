"""Start-to-exit latency of ``python3 -c 'print(1)'`` per sandbox tier, beside the host.

One command: ``.venv/bin/python bench/sandbox.py [--runs 20] [--no-pool]``. Prints JSON:
per tier the median / min / max seconds of a full ``SandboxManager.run`` (cold: a new
sandbox each call) and, with the warm pool, of a call served by a pre-started sandbox;
``ratio_to_host`` compares each with running the same command on the host in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/ holds an http.py that would shadow the stdlib: import from the repo root instead
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from gateway.config.model import Config
from gateway.sandbox import Limits, SandboxManager, SandboxRequest

CMD = ("/usr/bin/python3", "-c", "print(1)")


def measure(
    fn: Callable[[], bytes], runs: int, between: Callable[[], object] | None = None
) -> dict[str, float]:
    """Median/min/max wall time of ``fn``; ``between`` runs untimed before each call."""
    fn()  # warm-up (page cache, image layers, seccomp filter build)
    times = []
    for _ in range(runs):
        if between is not None:
            between()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if out.strip() != b"1":
            raise SystemExit(f"unexpected output {out!r}")
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-pool", action="store_true", help="skip the warm-pool measurement")
    args = ap.parse_args()

    manager = SandboxManager(Config())
    limits = Limits.from_config(Config().sandbox)
    req = SandboxRequest(command=CMD)
    host = measure(lambda: subprocess.run(CMD, capture_output=True, check=True).stdout, args.runs)
    results: dict[str, object] = {"host": host, "runs": args.runs, "command": " ".join(CMD)}
    tiers: dict[str, object] = {}
    for tier in ("bwrap", "docker", "gvisor"):
        ok, reason = manager.available(tier)
        if not ok:
            tiers[tier] = {"available": False, "reason": reason}
            continue

        def cold(t: str = tier) -> bytes:
            return manager.tiers[t].run(req, limits).stdout

        row = measure(cold, args.runs)
        row["ratio_to_host"] = round(row["median_s"] / host["median_s"], 1)
        tiers[tier] = {"cold": row}
    if not args.no_pool:
        manager.start_warm_pool(2)
        pool = manager.warm_pool
        assert pool is not None
        for tier in ("docker", "gvisor"):  # bwrap has no pool: cold is already < 0.1 s
            entry = tiers.get(tier)
            if not isinstance(entry, dict) or "cold" not in entry:
                continue
            pool.wait_idle(tier, timeout_s=60)
            # "command": the same argv as cold; "code": what a run_python tool call sends
            # (SandboxRequest(code=...)), which the pool runs in a forked, already-started
            # interpreter instead of exec'ing a new one
            for label, wreq in (("warm_pool", req), ("warm_pool_code", SandboxRequest(code="print(1)"))):
                served: list[bool] = []

                def warm(t: str = tier, s: list[bool] = served, r: SandboxRequest = wreq) -> bytes:
                    res = manager.run(t, r, limits)
                    s.append(pool.last_served_from_pool(t))
                    return res.stdout

                # refill and removal happen between calls, untimed: measure the call itself
                def settle(t: str = tier) -> bool:
                    return pool.wait_idle(t, timeout_s=60)

                row = measure(warm, args.runs, between=settle)
                row["ratio_to_host"] = round(row["median_s"] / host["median_s"], 1)
                row["served_from_pool"] = sum(served)
                entry[label] = row
    manager.close()
    results["tiers"] = tiers
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
