"""Soak benchmark: does per-call cost or memory grow with the number of calls made?

One command, JSON on stdout (one progress line per row on stderr):

    .venv/bin/python bench/soak.py [--calls 1000000] [--every 10000] [--http-sessions 3]

Set-up (everything real, on 127.0.0.1): two gateways with policy (``policies.rego``), the
signed audit log and tool verification (``tofu``) on, in front of the same kind of upstream
(``bench/soak_upstream.py``, a real SDK server over stdio):

- ``symbi mcp`` over stdio: one session, principal ``soak-stdio``;
- ``symbi serve`` over streamable HTTP: ``--http-sessions`` concurrent sessions, one API key
  (principal) each; every session is closed and a new one opened after ``--churn-every``
  calls (session churn: initialize, calls, DELETE);
- every ``--list-changed-every`` calls a caller asks the upstream to add or remove a tool and
  announce it (``tools/list_changed``): the gateway re-lists, re-verifies and rebuilds.

Every ``--every`` calls (all callers together) one row: p50/p99 latency of that interval,
calls/s of that interval, RSS and open fds of each gateway process, audit database size
(both gateways), and from the HTTP gateway's ``GET /api/state``: live sessions and asyncio
tasks. At the end: the least-squares slope of each column against calls made (per 100,000
calls) and the goal check: p50 and RSS at the end within 10% of their values after the first
50,000 calls (the baseline is measured in the same run).
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when run as a script; a sibling module named like a stdlib one
# (bench/http.py) would shadow it, so take bench/ off the path and put the repo on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from bench._common import (
    ROOT,
    SYMBI,
    free_port,
    gateway_env,
    percentile,
    process,
    stdio_session,
    wait_port,
    write_gateway_config,
)

UPSTREAM = ROOT / "bench" / "peers" / "soak_upstream.py"  # not in bench/: bench/http.py would shadow http
TOOLS = ["soak__echo", "soak__churn", "soak__extra"]
BASELINE_CALLS = 50_000
COLUMNS = [
    "p50_ms",
    "p99_ms",
    "calls_per_s",
    "rss_mb_http",
    "rss_mb_stdio",
    "fds_http",
    "fds_stdio",
    "audit_mb",
    "sessions",
    "tasks",
]


def policy_data(folder: Path, principals: list[str]) -> Path:
    """The repo's policy data plus the soak principals as developers without volume caps
    (the benchmark measures the policy's cost, not its limits)."""
    data = json.loads((ROOT / "policies" / "data.json").read_text())
    cfg = data["symbi_data"]
    for p in principals:  # soak-stdio over stdio, the others with API keys
        ns = "stdio" if p == "soak-stdio" else "keys"
        cfg["principals"].setdefault(ns, {})[p] = {
            "roles": ["developer"],
            "rate_limit": 10**9,
            "max_calls_per_hour": 0,
        }
    cfg["roles"]["developer"]["tools"] += TOOLS
    path = folder / "policy-data.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def servers_toml() -> str:
    return f"""
[servers.soak]
command = "{sys.executable}"
args = ["{UPSTREAM}"]
verification = "tofu"
"""


# -- measurements -------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def child_pid(marker: str) -> int:
    """The pid of this process's child whose command line contains ``marker``."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = stat.rsplit(")", 1)[1].split()[1]
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ppid == me and marker in cmd:
            return int(entry)
    raise RuntimeError(f"no child process with {marker!r} in its command line")


def dir_mb(folder: Path, prefix: str) -> float:
    return sum(p.stat().st_size for p in folder.glob(prefix + "*") if p.is_file()) / 2**20


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else float("nan")


@dataclass
class Run:
    total: int
    every: int
    list_changed_every: int
    done: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    list_changes: int = 0
    sessions_opened: int = 0
    interval: list[float] = field(default_factory=list)
    interval_start: float = field(default_factory=time.perf_counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    row_due: anyio.Event = field(default_factory=anyio.Event)
    pending: list[tuple[int, list[float], float]] = field(default_factory=list)
    finished: bool = False  # every caller is done
    deadline: float | None = None  # --max-minutes
    stopped_early: bool = False
    callers: int = 0  # still calling
    sampled: anyio.Event = field(default_factory=anyio.Event)  # the last row is taken

    def caller_done(self) -> None:
        self.callers -= 1
        if self.callers == 0:
            self.finished = True
            self.flush()  # the last, partial interval

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what[:300])

    def claim(self) -> int | None:
        """The number of the next call to make, or None when the run is complete."""
        if self.done >= self.total:
            return None
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.total = self.done  # out of time: stop here, and say so in the output
            self.stopped_early = True
            return None
        self.done += 1
        return self.done

    def record(self, seconds: float) -> None:
        self.interval.append(seconds)
        if len(self.interval) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Hand the current interval to the sampler as one row."""
        if not self.interval:
            self.row_due.set()
            return
        now = time.perf_counter()
        self.pending.append((self.done, self.interval, now - self.interval_start))
        self.interval, self.interval_start = [], now
        self.row_due.set()


# -- callers ------------------------------------------------------------------------------------


async def call_once(session: ClientSession, run: Run, n: int, tag: str) -> None:
    if n % run.list_changed_every == 0:
        res = await session.call_tool("soak__churn", {})
        run.list_changes += 1
        if res.is_error:
            run.error(f"churn: {res.content}")
        return
    msg = f"{tag}-{n}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    try:
        res = await session.send_request(
            types.CallToolRequest(
                params=types.CallToolRequestParams(name="soak__echo", arguments={"message": msg})
            ),
            types.CallToolResult,
        )
        text = res.content[0].text if res.content and isinstance(res.content[0], types.TextContent) else ""
        problem = None if not res.is_error and text == f"Echo: {msg}" else f"{tag}: {text}"
    except Exception as e:  # noqa: BLE001 - counted: a soak reports errors, it does not stop on one
        problem = f"{tag}: {type(e).__name__}: {e}"
    run.record(time.perf_counter() - t0)
    if problem is not None:
        run.error(problem)


async def stdio_caller(run: Run, config: Path, log: Path) -> None:
    async with stdio_session(
        str(SYMBI), ["mcp", "--config", str(config)], env=gateway_env(), errlog=log
    ) as s:
        while (n := run.claim()) is not None:
            await call_once(s, run, n, "stdio")
        run.caller_done()
        await run.sampled.wait()  # keep this gateway alive for the last row


async def http_caller(run: Run, url: str, key: str, churn_every: int, tag: str) -> None:
    try:
        await http_sessions(run, url, key, churn_every, tag)
    finally:
        run.caller_done()


async def http_sessions(run: Run, url: str, key: str, churn_every: int, tag: str) -> None:
    while run.done < run.total:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(60)) as hc,
            streamable_http_client(url, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            run.sessions_opened += 1
            for _ in range(churn_every):
                n = run.claim()
                if n is None:
                    break
                await call_once(s, run, n, tag)
        # leaving the block closes the session (DELETE): the next loop opens a new one


async def sampler(run: Run, base: str, admin_key: str, pids: dict[str, int], dirs: list[Path]) -> None:
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {admin_key}"}) as hc:
        while True:
            await run.row_due.wait()
            run.row_due = anyio.Event()
            while run.pending:
                calls, lat, wall = run.pending.pop(0)
                ms = [x * 1000 for x in lat]
                state = (await hc.get(base + "/api/state")).json()
                row = {
                    "calls": calls,
                    "p50_ms": round(percentile(ms, 50), 3),
                    "p99_ms": round(percentile(ms, 99), 3),
                    "calls_per_s": round(len(lat) / wall, 1) if wall > 0 else float("nan"),
                    "rss_mb_http": round(rss_mb(pids["http"]), 1),
                    "rss_mb_stdio": round(rss_mb(pids["stdio"]), 1),
                    "fds_http": open_fds(pids["http"]),
                    "fds_stdio": open_fds(pids["stdio"]),
                    "audit_mb": round(sum(dir_mb(d, "audit") for d in dirs), 2),
                    "sessions": state["owned"].get("sessions"),
                    "tasks": state["owned"].get("tasks"),
                    "errors": run.errors,
                }
                if run.error_samples and len(run.rows) == 0:
                    print("first errors:", run.error_samples[:3], file=sys.stderr, flush=True)
                run.rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            if run.finished and not run.pending:
                run.sampled.set()
                return


# -- summary ------------------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    xs = [float(r["calls"]) for r in rows]
    slopes: dict[str, float | None] = {}
    relative: dict[str, float | None] = {}
    for col in COLUMNS:
        pts = [(x, float(r[col])) for x, r in zip(xs, rows, strict=True) if r.get(col) is not None]
        s = slope([p[0] for p in pts], [p[1] for p in pts])
        mean = sum(p[1] for p in pts) / len(pts) if pts else 0.0
        slopes[col] = None if math.isnan(s) else round(s * 100_000, 4)  # per 100,000 calls
        relative[col] = None if math.isnan(s) or not mean else round(s * 100_000 / mean * 100, 2)
    goal: dict[str, Any] = {}
    base = next((r for r in rows if r["calls"] >= BASELINE_CALLS), None)
    if base is not None and rows[-1] is not base:
        end = rows[-1]
        for col in ("p50_ms", "rss_mb_http", "rss_mb_stdio"):
            change = (end[col] - base[col]) / base[col] if base[col] else float("nan")
            goal[col] = {
                "after_50k": base[col],
                "end": end[col],
                "change": round(change, 4),
                "within_10pct": abs(change) <= 0.10,
            }
    return {"slopes_per_100k_calls": slopes, "slopes_pct_of_mean_per_100k_calls": relative, "goal": goal}


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (for the README)."""
    cols = ["calls", *COLUMNS]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


async def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from gateway.server.auth import ApiKeyStore

    principals = [f"soak-p{i}" for i in range(args.http_sessions)]
    data = policy_data(tmp, ["soak-stdio", *principals])
    stdio_cfg = write_gateway_config(
        tmp / "stdio", servers_toml(), security=True, principal="soak-stdio", policy_data=data
    )
    http_cfg = write_gateway_config(tmp / "http", servers_toml(), security=True, policy_data=data)
    store = ApiKeyStore(tmp / "http" / "data" / "api-keys.json")
    keys = [store.create(p, ("developer",))[0] for p in principals]
    admin_key, _ = store.create("soak-admin", ("admin",))
    port = free_port()
    run = Run(total=args.calls, every=args.every, list_changed_every=args.list_changed_every)
    if args.max_minutes:
        run.deadline = time.monotonic() + args.max_minutes * 60
    cmd = [str(SYMBI), "serve", "--config", str(http_cfg), "--port", str(port)]
    with process(cmd, tmp / "serve.log", env=gateway_env()) as proc:
        await anyio.to_thread.run_sync(wait_port, port, proc, 60.0)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as hc:  # ready: upstream connected, policy and audit up
            for _ in range(600):
                if (await hc.get(base + "/readyz")).status_code == 200:
                    break
                await anyio.sleep(0.1)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            run.callers = 1 + len(keys)
            tg.start_soon(stdio_caller, run, stdio_cfg, tmp / "stdio.log")
            while True:  # the stdio gateway is a child of this process once its session is up
                try:
                    pids = {"http": proc.pid, "stdio": child_pid(str(stdio_cfg))}
                    break
                except RuntimeError:
                    await anyio.sleep(0.1)
            for i, key in enumerate(keys):
                tg.start_soon(http_caller, run, base + "/mcp", key, args.churn_every, f"http{i}")
            tg.start_soon(
                sampler, run, base, admin_key, pids, [tmp / "stdio" / "data", tmp / "http" / "data"]
            )
        wall = time.perf_counter() - started
    rows = run.rows
    return {
        "benchmark": "soak",
        "calls": run.done,
        "calls_asked": args.calls,
        "stopped_early": run.stopped_early,
        "wall_s": round(wall, 1),
        "errors": run.errors,
        "error_samples": run.error_samples,
        "list_changes": run.list_changes,
        "http_sessions_opened": run.sessions_opened,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rows": rows,
        **summarise(rows),
        "table_markdown": table(rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1_000_000, help="calls to make in all (default 1,000,000)")
    ap.add_argument("--every", type=int, default=10_000, help="calls per row (default 10,000)")
    ap.add_argument(
        "--http-sessions", type=int, default=3, help="concurrent HTTP sessions, one principal each"
    )
    ap.add_argument(
        "--churn-every", type=int, default=500, help="calls per HTTP session before it is replaced"
    )
    ap.add_argument(
        "--list-changed-every", type=int, default=5_000, help="calls between upstream list changes"
    )
    ap.add_argument(
        "--max-minutes", type=float, help="stop making calls after this long (and report what ran)"
    )
    ap.add_argument(
        "--workdir", type=Path, help="keep configs, logs and audit databases here (default: a temp dir)"
    )
    args = ap.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = anyio.run(soak, args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="symbi-soak-") as d:
            result = anyio.run(soak, args, Path(d))
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
