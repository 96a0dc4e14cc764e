"""Issue 16's HTTP target: tools/call over streamable HTTP under 64 concurrent sessions.

    .venv/bin/python bench/http_load.py [--sessions 64] [--driver wrk|clients] [--procs 4] [--seconds 8]
                                        [--rounds 3] [--json-response] [--baseline-tree DIR] [--no-mcp-proxy]
                                        [--workers N] [--workers-json]

Targets, interleaved (every round measures each once, the order rotating):

* ``direct``     npm server-everything in streamableHttp mode (loopback), ``echo``
* ``mcp-proxy``  PyPI mcp-proxy 0.13.0 (its own venv: scripts/mcp-proxy-peer.sh) bridging the same
                 server over stdio: no auth, no policy, no audit
* ``gateway``    ``symbi serve``: API key auth (one key per session: the default
                 ``http.max_sessions_per_principal`` of 16 stays on), the repo's Rego policy,
                 the signed audit log, ``tofu`` verification, the same server over stdio; SSE
                 answers (the default), plain ``tools/call`` POSTs served by the HTTP fast lane
* ``gateway-sdk``       the same with ``mcp.http_fast_lane = false``: every request through the SDK
* ``gateway-json``      (``--json-response``) the same with ``http.json_response = true`` (its
                        plain ``tools/call`` POSTs served by the HTTP fast lane, ``mcp.http_fast_lane``)
* ``gateway-json-sdk``  (``--json-response``) the same with the lane off: every request through the SDK
* ``gateway-baseline``  (``--baseline-tree DIR``) the same gateway from another checkout
* ``gateway-json-baseline``  (``--baseline-tree DIR --json-response``) its JSON lane
* ``gateway-1w``, ``gateway-<N>w``  (``--workers N``) ``symbi serve`` and ``symbi serve --workers N``
                 (N processes behind HAProxy, issue 16) with the same config on shared state (a
                 private Redis and PostgreSQL): ``workers_vs_one`` compares them round by round
* ``gateway-1w-baseline``  (``--workers N --baseline-tree DIR``) ``gateway-1w`` from that checkout:
                 ``one_worker_vs_baseline_tree``
  (``--workers-json``: these three answer with ``http.json_response = true``)

The load: ``--sessions`` handshake-era MCP sessions, one HTTP connection and one call in flight
per session, for ``--seconds``. ``--driver wrk`` (the default; Debian's wrk, bench/_wrk.py): one
wrk thread per session, a quarter or less of a Python client's CPU per call, so the cores go
to the server under test. ``--driver clients``: ``--procs`` client processes
(bench/_load_client.py: plain httpx, no SDK) holding the sessions between them, all starting
their measured phase together (sessions 7-11's numbers). Either way every call carries a
unique message; a reply must carry the call's own id and echo exactly its message
(``misrouted`` otherwise, must be 0). Before it, ``c1``: one session, sequential
calls (the unloaded p50). The exit code is 1 on any misrouted or failed call.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the stdlib's http: import from the repo root instead of bench/.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench._common import (
    EVERYTHING_JS,
    ROOT,
    SYMBI,
    everything_toml,
    free_port,
    gateway_env,
    latency_summary,
    median,
    write_http_gateway_config,
)
from bench._machine import host, run_load_clients
from bench._wrk import drive_wrk, wrk_path
from bench.http import PRELOAD, proc, wait_http

MCP_PROXY_VENV = Path(os.environ.get("MCP_PROXY_VENV", ROOT / ".venv-mcp-proxy"))


@dataclass
class Target:
    name: str
    url: str
    tool: str
    keys: list[str | None]  # one per session (None: no auth)
    pid: int = 0  # the server's process (py-spy attaches to it with --profile)


@contextlib.contextmanager
def targets(args: argparse.Namespace, tmp: Path) -> Iterator[list[Target]]:
    from gateway.server.auth import ApiKeyStore

    (tmp / "loopback.cjs").write_text(PRELOAD)
    up, mp, gw = free_port(), free_port(), free_port()
    names = [f"bench-{i:03d}" for i in range(args.sessions)]
    store = ApiKeyStore(tmp / "data" / "api-keys.json")
    keys: list[str | None] = [store.create(n, ("developer",))[0] for n in names]
    none: list[str | None] = [None] * args.sessions
    out: list[Target] = []
    with contextlib.ExitStack() as stack:
        p = stack.enter_context(
            proc(
                ["node", "-r", str(tmp / "loopback.cjs"), str(EVERYTHING_JS), "streamableHttp"],
                tmp / "direct.log",
                {**os.environ, "PORT": str(up)},
            )
        )
        wait_http(f"http://127.0.0.1:{up}/mcp", {400, 405, 406, 200}, timeout=180)
        out.append(Target("direct", f"http://127.0.0.1:{up}/mcp", "echo", none, p.pid))
        proxy = MCP_PROXY_VENV / "bin" / "mcp-proxy"
        if args.mcp_proxy:
            if not proxy.exists():
                raise SystemExit(f"{proxy} missing: run scripts/mcp-proxy-peer.sh (or --no-mcp-proxy)")
            cmd = [str(proxy), "--host", "127.0.0.1", "--port", str(mp), "--log-level", "WARNING"]
            p = stack.enter_context(proc([*cmd, "node", str(EVERYTHING_JS), "stdio"], tmp / "mcp-proxy.log"))
            wait_http(f"http://127.0.0.1:{mp}/status", {200}, timeout=180)
            out.append(Target("mcp-proxy", f"http://127.0.0.1:{mp}/mcp", "echo", none, p.pid))
        gateways = [("gateway", ROOT, gw, False, True)]
        if args.sdk_target:  # the same gateway with every request through the SDK (lane off)
            gateways.append(("gateway-sdk", ROOT, free_port(), False, False))
        if args.json_response:  # the same gateway answering POSTs with JSON instead of SSE
            gateways.append(("gateway-json", ROOT, free_port(), True, True))
            # and with every request through the SDK (mcp.http_fast_lane = false)
            gateways.append(("gateway-json-sdk", ROOT, free_port(), True, False))
        if args.baseline_tree is not None:  # the same gateway from another checkout (before a change)
            gateways.append(("gateway-baseline", args.baseline_tree.resolve(), free_port(), False, True))
            if args.json_response:  # and that checkout's JSON lane
                gateways.append(
                    ("gateway-json-baseline", args.baseline_tree.resolve(), free_port(), True, True)
                )
        for name, tree, port, json_response, lane in gateways:
            folder = tmp / name
            (folder / "data").mkdir(parents=True, mode=0o700)  # its own data dir (audit chain), the same keys
            shutil.copy(tmp / "data" / "api-keys.json", folder / "data" / "api-keys.json")
            cfg = write_http_gateway_config(
                folder, port, everything_toml("tofu"), names, json_response=json_response, http_fast_lane=lane
            )
            serve = [str(SYMBI), "serve", "--config", str(cfg)]
            env = {**gateway_env(), "PYTHONPATH": str(tree)}
            p = stack.enter_context(proc(serve, folder / "gateway.log", env))
            wait_http(f"http://127.0.0.1:{port}/readyz", {200}, timeout=180)
            out.append(Target(name, f"http://127.0.0.1:{port}/mcp", "everything__echo", keys, p.pid))
        if args.workers > 1:
            out += stack.enter_context(
                worker_targets(args.workers, tmp, names, args.baseline_tree, json_response=args.workers_json)
            )
        yield out


@contextlib.contextmanager
def worker_targets(
    workers: int,
    tmp: Path,
    names: list[str],
    baseline_tree: Path | None = None,
    *,
    json_response: bool = False,
) -> Iterator[list[Target]]:
    """``gateway-1w`` (one ``symbi serve``) and ``gateway-<N>w`` (``symbi serve --workers N``:
    N processes behind HAProxy), the same config on one private Redis and PostgreSQL (the keys
    in PostgreSQL, the bus secret shared); the server's CPU counts every worker and HAProxy.
    With ``baseline_tree``, also ``gateway-1w-baseline``: one ``symbi serve`` of that checkout."""
    from bench.scale import _engines
    from gateway.state.pgkeys import PgApiKeyStore
    from gateway.state.postgres import Postgres

    with _engines() as (_, redis, pg), contextlib.ExitStack() as stack:
        pool = Postgres(pg.url, timeout_s=5).open()
        keys: list[str | None] = [PgApiKeyStore(pool).create(n, ("developer",))[0] for n in names]
        pool.close()
        secret = base64.b64encode(os.urandom(32)).decode()
        state = f'[state]\nredis_url = "{redis.url}"\npostgres_url = "{pg.url}"\n[bus]\nsecret = "{secret}"\n'
        out: list[Target] = []
        runs = [("gateway-1w", 1, ROOT), (f"gateway-{workers}w", workers, ROOT)]
        if baseline_tree is not None:
            runs.append(("gateway-1w-baseline", 1, baseline_tree.resolve()))
        for name, n, tree in runs:
            port = free_port()
            cfg = write_http_gateway_config(
                tmp / name, port, everything_toml("tofu") + state, names, json_response=json_response
            )
            serve = [str(SYMBI), "serve", "--config", str(cfg), "--workers", str(n)]
            p = stack.enter_context(
                proc(serve, tmp / name / "gateway.log", {**gateway_env(), "PYTHONPATH": str(tree)})
            )
            wait_http(f"http://127.0.0.1:{port}/readyz", {200}, timeout=300)
            out.append(Target(name, f"http://127.0.0.1:{port}/mcp", "everything__echo", keys, p.pid))
        yield out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by ``pid`` and every live descendant (the
    gateway's and mcp-proxy's upstream node process count: a bridge's cost includes it)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(12) stime(13) (0-based, from the state field)
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo += [c for c, (ppid, _) in stats.items() if ppid == p]
    return total


def drive(
    t: Target, sessions: int, procs: int, seconds: float, run: str, driver: str, tmp: Path
) -> dict[str, Any]:
    """``sessions`` sessions loaded by wrk (one thread each) or by ``procs`` client processes
    between them; the merged result, with the server's CPU for the measured phase."""
    cpu0 = cpu = 0.0

    def started() -> None:
        nonlocal cpu0
        cpu0 = tree_cpu_s(t.pid)

    def ended() -> None:
        nonlocal cpu
        cpu = tree_cpu_s(t.pid) - cpu0

    if driver == "wrk":
        row = drive_wrk(t.url, t.tool, t.keys[:sessions], seconds, run, tmp, started, ended)
        calls = row["calls"]
        return {**row, "server_cpu_ms_per_call": round(1000.0 * cpu / calls, 3) if calls else float("nan")}
    rows = run_load_clients(
        client_jobs(t, sessions, procs, seconds, run), t.name, on_go=started, on_done=ended
    )
    lat = [x for r in rows for x in r["latencies_ms"]]
    wall = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return {
        "calls": len(lat),
        "calls_per_s": round(len(lat) / wall, 1),
        "server_cpu_ms_per_call": round(1000.0 * cpu / len(lat), 3) if lat else float("nan"),
        "client_cpu_ms_per_call": round(1000.0 * sum(r["cpu_s"] for r in rows) / len(lat), 3)
        if lat
        else float("nan"),
        **latency_summary([x / 1000.0 for x in lat]),
        **{k: sum(r[k] for r in rows) for k in ("ok", "misrouted", "errors", "reconnects")},
    }


def client_jobs(t: Target, sessions: int, procs: int, seconds: float, run: str) -> list[dict[str, Any]]:
    """The jobs of bench/_load_client.py's processes: ``sessions`` split between ``procs``."""
    per = [list(range(i, sessions, procs)) for i in range(procs)]
    return [
        {
            "url": t.url,
            "tool": t.tool,
            "keys": [t.keys[j] for j in idx],
            "seconds": seconds,
            "run": run,
            "tag": f"{run}-p{i}",
            "warmup": 3,
        }
        for i, idx in enumerate(per)
        if idx
    ]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "calls_per_s": round(median([r["calls_per_s"] for r in rows]), 1),
        "calls_per_s_per_round": [r["calls_per_s"] for r in rows],
        "p50_ms": round(median([r["p50_ms"] for r in rows]), 3),
        "p99_ms": round(median([r["p99_ms"] for r in rows]), 3),
        "server_cpu_ms_per_call": round(median([r["server_cpu_ms_per_call"] for r in rows]), 3),
        "client_cpu_ms_per_call": round(median([r["client_cpu_ms_per_call"] for r in rows]), 3),
        "calls": sum(r["calls"] for r in rows),
        **{k: sum(r[k] for r in rows) for k in ("ok", "misrouted", "errors", "reconnects")},
    }


def vs_baseline(
    runs: dict[str, dict[str, list[dict[str, Any]]]], base: str = "gateway-baseline", name: str = "gateway"
) -> dict[str, Any]:
    """``name`` against ``base`` (``--baseline-tree``'s gateway, or the lane-off one), round by
    round (medians of ratios)."""
    out: dict[str, Any] = {}
    for phase in ("c1", "load"):
        pairs = list(zip(runs[name][phase], runs[base][phase], strict=True))
        out[phase] = {
            k: round(median([a[k] / b[k] for a, b in pairs]), 3)
            for k in ("calls_per_s", "p50_ms", "server_cpu_ms_per_call")
        }
    return out


def profile(args: argparse.Namespace, tmp: Path) -> int:
    """py-spy on the gateway (and its worker processes) while the load runs."""
    from bench.profile_call import summarise

    args.mcp_proxy = False
    pyspy = Path(sys.executable).parent / "py-spy"
    raw = tmp / "profile.txt"
    with targets(args, tmp) as ts:
        [gw] = [t for t in ts if t.name == args.profile_target]
        drive(gw, args.sessions, args.procs, 2.0, "warm", args.driver, tmp)
        cmd = [str(pyspy), "record", "-r", "200", "-f", "raw", "--nonblocking", "--subprocesses"]
        cmd += ["-o", str(raw), "-d", str(int(args.seconds) + 2), "--pid", str(gw.pid)]
        if args.profile_gil:  # only samples of the thread holding the GIL, with thread names
            cmd += ["--gil", "--threads"]
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        row = drive(gw, args.sessions, args.procs, args.seconds, "profile", args.driver, tmp)
        spy.wait()
    print(
        f"gateway under load: {row['calls_per_s']} calls/s, p50 {row['p50_ms']} ms, "
        f"misrouted {row['misrouted']}, errors {row['errors']}\n"
    )
    print(summarise(raw, 30))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.driver == "wrk":
        wrk_path()  # missing: say so before any server starts
    # a plain SIGTERM (timeout, a CI step) must still run the clean-ups: no orphaned servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-http-load-"))
    if args.profile:
        return profile(args, tmp)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with targets(args, tmp) as ts:
        for r in range(args.rounds):
            order = ts[r % len(ts) :] + ts[: r % len(ts)]
            for t in order:
                rows = runs.setdefault(t.name, {"c1": [], "load": []})
                tag = f"r{r}-{t.name}-{uuid.uuid4().hex[:6]}"
                rows["c1"].append(drive(t, 1, 1, args.c1_seconds, tag + "-c1", args.driver, tmp))
                rows["load"].append(drive(t, args.sessions, args.procs, args.seconds, tag, args.driver, tmp))
    results = {name: {k: summarize(v) for k, v in rows.items()} for name, rows in runs.items()}
    doc = _document(args, runs, results)
    print(json.dumps(doc, indent=2))
    return 1 if doc["targets"]["misrouted_or_failed"] else 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument(
        "--driver",
        choices=("wrk", "clients"),
        default="wrk",
        help="the load: wrk, one thread and connection per session (default), or --procs Python client processes",
    )
    ap.add_argument("--procs", type=int, default=4, help="load-client processes (--driver clients)")
    ap.add_argument("--seconds", type=float, default=8.0, help="measured phase per target and round")
    ap.add_argument("--c1-seconds", type=float, default=3.0, help="the one-session sequential phase")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--json-response", action="store_true", help="also the gateway with http.json_response = true"
    )
    ap.add_argument("--no-mcp-proxy", dest="mcp_proxy", action="store_false")
    ap.add_argument(
        "--no-sdk-target", dest="sdk_target", action="store_false", help="leave out gateway-sdk (lane off)"
    )
    ap.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="also run the gateway from this checkout (e.g. /work/main: the code before a change)",
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="only the gateway, one load phase under py-spy: a Markdown profile instead of JSON",
    )
    ap.add_argument("--profile-target", default="gateway", help="the target --profile runs (gateway-sdk...)")
    ap.add_argument(
        "--profile-gil",
        action="store_true",
        help="--profile: only samples holding the GIL (what the loop thread competes for), by thread",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="also gateway-1w and gateway-<N>w: symbi serve and symbi serve --workers N on one "
        "private Redis and PostgreSQL (bench/scale.py's), compared round by round",
    )
    ap.add_argument(
        "--workers-json",
        action="store_true",
        help="with --workers: those targets answer POSTs with JSON (http.json_response = true)",
    )
    return ap


def _document(
    args: argparse.Namespace, runs: dict[str, dict[str, list[dict[str, Any]]]], results: dict[str, Any]
) -> dict[str, Any]:
    """The printed JSON document: the summaries, the comparisons, and issue 16's targets."""
    gw = results["gateway"]
    base = "mcp-proxy" if "mcp-proxy" in results else "direct"
    bad = sum(v[k] for res in results.values() for v in res.values() for k in ("misrouted", "errors"))
    doc = {
        "benchmark": "http_load (issue 16, streamable HTTP)",
        "load": (
            f"wrk (bench/_wrk.py), one thread and connection per session, {args.sessions} sessions"
            if args.driver == "wrk"
            else f"{args.procs} client processes (httpx, bench/_load_client.py), {args.sessions} sessions"
        )
        + f", 1 call in flight each, {args.seconds}s per target per round",
        "gateway": "symbi serve: API key per session, policies.rego, signed audit log, tofu; "
        "upstream server-everything over stdio, SSE answers; gateway-sdk: mcp.http_fast_lane = false; "
        "gateway-json: http.json_response = true"
        + ("; gateway-1w/-Nw: http.json_response = true" if args.workers_json else ""),
        "rounds": args.rounds,
        "host": host(),
        "results": results,
        "vs_baseline_tree": vs_baseline(runs) if "gateway-baseline" in runs else {},
        "json_vs_baseline_tree": vs_baseline(runs, "gateway-json-baseline", "gateway-json")
        if "gateway-json-baseline" in runs
        else {},
        # the SSE lane against the SDK path, round by round (calls/s, p50, server CPU per call)
        "lane_vs_sdk": vs_baseline(runs, "gateway-sdk") if "gateway-sdk" in runs else {},
        # --workers N: N worker processes behind HAProxy against one process, the same shared state
        "workers_vs_one": vs_baseline(runs, "gateway-1w", f"gateway-{args.workers}w")
        if "gateway-1w" in runs
        else {},
        # one process on shared state against --baseline-tree's (before a change)
        "one_worker_vs_baseline_tree": vs_baseline(runs, "gateway-1w-baseline", "gateway-1w")
        if "gateway-1w-baseline" in runs
        else {},
        # and against the one process without shared state (what --workers 1 needs no Redis for)
        "workers_vs_plain": vs_baseline(runs, "gateway", f"gateway-{args.workers}w")
        if "gateway-1w" in runs
        else {},
        "targets": {
            "calls_per_s": {"target": 1500, "measured": gw["load"]["calls_per_s"]},
            "p50_below_peer_under_load": {
                "peer": base,
                "peer_ms": results[base]["load"]["p50_ms"],
                "measured_ms": gw["load"]["p50_ms"],
                "met": gw["load"]["p50_ms"] < results[base]["load"]["p50_ms"],
            },
            "p50_below_peer_one_session": {
                "peer": base,
                "peer_ms": results[base]["c1"]["p50_ms"],
                "measured_ms": gw["c1"]["p50_ms"],
                "met": gw["c1"]["p50_ms"] < results[base]["c1"]["p50_ms"],
            },
            "misrouted_or_failed": bad,
        },
    }
    doc["targets"]["calls_per_s"]["met"] = gw["load"]["calls_per_s"] >= 1500
    return doc


if __name__ == "__main__":
    raise SystemExit(main())
