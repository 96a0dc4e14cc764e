"""The machine a benchmark runs on, and the load it puts there: the machine's speed at the time
(``machine_speed``), what a result records of it (``host``), and the load-client processes the
HTTP benchmarks start (``run_load_clients``, one ``bench/_load_client.py`` each)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench._common import ROOT


def run_load_clients(
    jobs: Sequence[dict[str, Any]], label: str, on_go: Callable[[], None], on_done: Callable[[], None]
) -> list[dict[str, Any]]:
    """One ``bench/_load_client.py`` process per job: each opens its sessions and says "ready";
    then ``on_go()``, all start their measured phase together, each answers one JSON row, and
    ``on_done()``. The rows, in the jobs' order; every client is gone on return."""
    children = []
    try:
        for job in jobs:
            p = subprocess.Popen(
                [sys.executable, "-m", "bench._load_client"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=ROOT,
                text=True,
            )
            children.append(p)
            assert p.stdin is not None
            p.stdin.write(json.dumps(job) + "\n")
            p.stdin.flush()
        for p in children:  # every session open and warm
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{label}: a load client failed to open its sessions")
        on_go()
        for p in children:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        rows = []
        for p in children:
            assert p.stdout is not None
            rows.append(json.loads(p.stdout.readline()))
        on_done()
        for p in children:
            p.wait(30)
        return rows
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()


def machine_speed(samples: int = 15, n: int = 300_000) -> dict[str, float]:
    """Million iterations a second of a fixed pure-Python loop, ``samples`` windows of ``n``
    (~10 ms each): this virtual machine's speed at the time. Here it flips between two levels
    (about 20 and 37) from one second to the next with no steal time counted, which moves a
    timed round by up to 1.8x: the spread of this machine's rounds. A reading for comparing
    rounds and runs, not a correction applied to them."""
    rates = []
    for _ in range(samples):
        t0 = time.perf_counter()
        total = 0
        for i in range(n):
            total += i
        rates.append(n / (time.perf_counter() - t0) / 1e6)
    rates.sort()
    return {
        "loop_mops_min": round(rates[0], 1),
        "loop_mops_median": round(rates[len(rates) // 2], 1),
        "loop_mops_max": round(rates[-1], 1),
    }


def host() -> dict[str, object]:
    """The machine a result was measured on, as the JSON documents record it."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "machine_speed": machine_speed(),
        "time": time.strftime("%Y-%m-%d %H:%M"),
    }
