"""Growth benchmark (issue 16): how start-up, listing, catalogue rebuild and memory grow with
the number of upstreams, and memory with the number of idle HTTP sessions.

One command, JSON on stdout (progress on stderr):

    .venv/bin/python bench/growth.py [--upstreams 5,10,25,50] [--tools 40]
                                     [--sessions 100,250,500,1000] [--lists 20] [--rebuilds 5]

Everything is real, on 127.0.0.1: ``symbi serve`` with its default security config (policy
from ``policies.rego``, the signed audit log, ``tofu`` verification of every upstream) in front
of N real SDK servers over stdio (``bench/peers/growth_upstream.py``, ``--tools`` tools each),
and the SDK's streamable-HTTP client with one API key per session.

Part ``upstreams``, one fresh gateway (fresh data dir: every tool is pinned on first sight)
per N:

- ``ready_s``: from starting ``symbi serve`` to ``/readyz`` answering 200 (every upstream up,
  policy loaded, audit writable), with the gateway's own CPU-seconds by then (``ready_cpu_s``:
  the upstreams' start-up is theirs, not the gateway's);
- ``first_list_s``: from the start to the first ``tools/list`` that shows all N x tools;
- ``list_p50_ms``: client-side p50 of ``--lists`` ``tools/list`` calls (and the gateway's
  CPU-ms per list);
- ``rebuild_ms``: one upstream's ``churn`` adds or removes a tool and announces it; from the
  call to the client receiving ``notifications/tools/list_changed`` (the catalogue rebuilt,
  re-verified and the change announced), p50 of ``--rebuilds``; ``rebuild_seen_ms`` until a
  ``tools/list`` shows the change; ``rebuild_gateway_ms`` the gateway's own figure (the
  ``notify.list_changed`` audit event's ``after_ms``: upstream notice to pushes queued);
- ``rss_mb``: the gateway process's RSS after all that (upstreams' RSS apart).

Part ``sessions``: one gateway, one upstream; sessions are opened in steps (100, 250, 500,
1,000 in all), each ``initialize`` + one ``tools/call`` (reply checked), then kept open and
idle; RSS after each step. Each session has its own API key (principal): the default
``[http] max_sessions_per_principal`` (16) is per principal, and the default
``max_sessions`` (1,000) is the cap this part runs up to.

Each series is fitted: the least-squares slope (per upstream / per session) and the exponent
``b`` of ``y ~ x^b`` (log-log fit); ``b <= 1.15`` is reported as linear or better. The
marginal cost of each step (dy/dx between neighbouring points) shows where growth happens.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is sys.path[0] when run as a script; bench/http.py would shadow the stdlib http.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
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
    wait_port,
    write_gateway_config,
)
from bench._fit import fit

UPSTREAM = ROOT / "bench" / "peers" / "growth_upstream.py"
CLIENT = "growth-client"
CONNECT_TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(f"[growth {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- process measurements -------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU-seconds of ``pid`` itself (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_rss_mb(pid: int) -> float:
    """RSS of ``pid``'s direct children (the upstream processes)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                total += rss_mb(int(entry))
        except OSError:
            continue
    return total


# -- a gateway ------------------------------------------------------------------------------


def servers_toml(n: int, tools: int) -> str:
    return "".join(
        f"""
[servers.up{i}]
command = "{sys.executable}"
args = ["{UPSTREAM}", "--name", "up{i}", "--tools", "{tools}"]
verification = "tofu"
"""
        for i in range(n)
    )


def policy_data(folder: Path, principals: list[str]) -> Path:
    """The repo's policy data plus the bench principals as developers allowed the upstreams'
    tools, without volume caps (the benchmark measures the policy's cost, not its limits)."""
    data = json.loads((ROOT / "policies" / "data.json").read_text())
    cfg = data["symbi_data"]
    for p in principals:
        cfg["principals"].setdefault("keys", {})[p] = {
            "roles": ["developer"],
            "rate_limit": 10**9,
            "max_calls_per_hour": 0,
        }
    cfg["roles"]["developer"]["tools"] += ["up*__*"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy-data.json"
    path.write_text(json.dumps(data))
    return path


def make_keys(folder: Path, principals: list[str]) -> dict[str, str]:
    """One API key per principal (developer), plus ``growth-admin`` (admin), written at once."""
    from gateway.apikeys import new_key
    from gateway.server.auth import ApiKeyStore

    made = {p: new_key(p, ("developer",), "user") for p in principals}
    made["growth-admin"] = new_key("growth-admin", ("admin",), "user")
    ApiKeyStore(folder / "data" / "api-keys.json")._write([rec for _, rec in made.values()])
    return {p: key for p, (key, _) in made.items()}


@contextlib.asynccontextmanager
async def gateway(
    folder: Path, n: int, tools: int, principals: list[str], page_size: int | None = None
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, dict[str, str], float]]:
    """``symbi serve`` in front of ``n`` upstreams; yields (process, base URL, keys, seconds to ready)."""
    data = policy_data(folder, principals)
    # a loaded machine can take more than the default 30 s to start one SDK server: what is
    # measured here is the start-up, not that timeout (upstreams start a few at a time anyway)
    extra = f"[mcp]\nconnection_timeout_s = {CONNECT_TIMEOUT_S}\n"
    if page_size is not None:
        extra += f"list_page_size = {page_size}\n"
    cfg = write_gateway_config(folder, servers_toml(n, tools), security=True, policy_data=data, extra=extra)
    keys = make_keys(folder, principals)
    port = free_port()
    cmd = [str(SYMBI), "serve", "--config", str(cfg), "--port", str(port)]
    started = time.perf_counter()
    with process(cmd, folder / "serve.log", env=gateway_env()) as proc:
        await anyio.to_thread.run_sync(wait_port, port, proc, 900.0)  # a loaded machine
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30) as hc:
            while (await hc.get(base + "/readyz")).status_code != 200:
                if proc.poll() is not None or time.perf_counter() - started > 900:
                    raise RuntimeError(f"gateway with {n} upstreams never ready: see {folder / 'serve.log'}")
                await anyio.sleep(0.05)
        yield proc, base, keys, time.perf_counter() - started


class Listener:
    """Records when ``notifications/tools/list_changed`` arrives on a session."""

    def __init__(self) -> None:
        self.arrived = anyio.Event()
        self.at = 0.0

    async def handler(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification) and not self.arrived.is_set():
            self.at = time.perf_counter()
            self.arrived.set()

    def reset(self) -> None:
        self.arrived = anyio.Event()


@contextlib.asynccontextmanager
async def session(url: str, key: str, listener: Listener | None = None) -> AsyncIterator[ClientSession]:
    """A handshake-era (2025-11-25) SDK session over streamable HTTP with ``key``."""
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(120)) as hc,
        # the SDK client's default SSE event limit (1 MiB): tools/list comes in pages
        # (mcp.list_page_size); 2,000 tools in one reply were over it
        streamable_http_client(url, http_client=hc) as (r, w),
        ClientSession(r, w, message_handler=listener.handler if listener else None) as s,
    ):
        await s.initialize()
        yield s


async def tool_names(s: ClientSession) -> set[str]:
    """The whole listing, every page (following nextCursor)."""
    names: set[str] = set()
    cursor: str | None = None
    while True:
        page = await s.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        names.update(t.name for t in page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return names


# -- part 1: upstreams ----------------------------------------------------------------------


async def one_size(
    folder: Path, n: int, tools: int, lists: int, rebuilds: int, page_size: int | None = None
) -> dict[str, Any]:
    expected = {f"up{i}__tool_{k:02d}" for i in range(n) for k in range(tools - 2)}
    expected |= {f"up{i}__churn" for i in range(n)}
    async with gateway(folder, n, tools, [CLIENT], page_size) as (proc, base, keys, ready_s):
        ready_cpu, ready_at = cpu_s(proc.pid), time.perf_counter()
        listener = Listener()
        async with session(base + "/mcp", keys[CLIENT], listener) as s:
            for _ in range(600):  # ready = every upstream up; the first full listing follows
                if expected <= await tool_names(s):
                    break
                await anyio.sleep(0.05)
            else:
                raise RuntimeError(f"{n} upstreams: tools/list never showed every tool")
            first_list_s = ready_s + time.perf_counter() - ready_at
            lat: list[float] = []
            c0 = cpu_s(proc.pid)
            for _ in range(lists):
                t0 = time.perf_counter()
                names = await tool_names(s)
                lat.append(time.perf_counter() - t0)
                if not expected <= names:
                    raise RuntimeError(f"{n} upstreams: tools/list lost tools")
            list_cpu_ms = (cpu_s(proc.pid) - c0) * 1000 / lists
            notify, seen, rb_cpu = await rebuild_rounds(s, listener, proc.pid, f"up{n - 1}", rebuilds)
            gw_ms = await gateway_after_ms(base, keys["growth-admin"])
        rss = rss_mb(proc.pid)
        ups = children_rss_mb(proc.pid)
    ms = [x * 1000 for x in lat]
    return {
        "upstreams": n,
        "tools": n * tools,
        "ready_s": round(ready_s, 3),
        "ready_cpu_s": round(ready_cpu, 3),
        "first_list_s": round(first_list_s, 3),
        "list_p50_ms": round(percentile(ms, 50), 3),
        "list_p90_ms": round(percentile(ms, 90), 3),
        "list_cpu_ms": round(list_cpu_ms, 3),
        "rebuild_ms": round(statistics.median(notify), 3),
        "rebuild_seen_ms": round(statistics.median(seen), 3),
        "rebuild_cpu_ms": round(statistics.median(rb_cpu), 3),
        "rebuild_gateway_ms": round(statistics.median(gw_ms), 3) if gw_ms else None,
        "rebuild_samples_ms": [round(x, 1) for x in notify],
        "rss_mb": round(rss, 1),
        "upstreams_rss_mb": round(ups, 1),
    }


async def rebuild_rounds(
    s: ClientSession, listener: Listener, pid: int, upstream: str, rounds: int
) -> tuple[list[float], list[float], list[float]]:
    """``rounds`` list changes on ``upstream``: ms to the pushed notice, ms until a listing
    shows the change, and the gateway's CPU-ms over the rebuild (the call included)."""
    notify, seen, cpu = [], [], []
    extra = f"{upstream}__extra"
    for _ in range(rounds):
        had = extra in await tool_names(s)
        listener.reset()
        c0, t0 = cpu_s(pid), time.perf_counter()
        res = await s.call_tool(f"{upstream}__churn", {})
        if res.is_error:
            raise RuntimeError(f"churn on {upstream} failed: {res.content}")
        with anyio.fail_after(30):
            await listener.arrived.wait()
        notify.append((listener.at - t0) * 1000)
        cpu.append((cpu_s(pid) - c0) * 1000)
        with anyio.fail_after(120):
            while (extra in await tool_names(s)) == had:  # noqa: ASYNC110 - polling is the measurement
                await anyio.sleep(0.01)
        seen.append((time.perf_counter() - t0) * 1000)
    return notify, seen, cpu


async def gateway_after_ms(base: str, admin_key: str) -> list[float]:
    """The ``after_ms`` of every ``notify.list_changed`` on the audit record."""
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {admin_key}"}) as hc:
        r = await hc.get(base + "/api/audit/query", params={"type": "notify.list_changed"})
    out: list[float] = []
    for ev in r.json().get("events", []) if r.status_code == 200 else []:
        fields = ev.get("details")
        if isinstance(fields, dict) and isinstance(fields.get("after_ms"), int | float):
            out.append(float(fields["after_ms"]))
    return out


# -- part 2: idle sessions ------------------------------------------------------------------


async def hold_session(
    url: str, key: str, opened: list[int], errors: list[str], up: anyio.Event, release: anyio.Event
) -> None:
    """One session: initialize, one checked call, then idle until ``release``."""
    try:
        async with session(url, key) as s:
            msg = f"{key[-6:]}-hello"
            res = await s.call_tool("up0__tool_00", {"message": msg})
            block = res.content[0] if res.content else None
            if (
                res.is_error
                or not isinstance(block, types.TextContent)
                or block.text != f"up0/tool_00: {msg}"
            ):
                errors.append(f"bad reply: {res.content}"[:200])
            opened.append(1)
            up.set()
            await release.wait()
    except Exception as e:  # noqa: BLE001 - counted: a benchmark reports errors
        errors.append(f"{type(e).__name__}: {e}"[:200])
    finally:
        up.set()


async def sessions_part(folder: Path, steps: list[int], tools: int, parallel: int) -> dict[str, Any]:
    principals = [f"growth-s{i:04d}" for i in range(max(steps) + 1)]  # +1: the warm-up session
    async with gateway(folder, 1, tools, principals) as (proc, base, keys, _):
        url = base + "/mcp"
        async with session(url, keys[principals[-1]]) as s:  # warm-up: first-use imports and caches
            await s.call_tool("up0__tool_00", {"message": "warm"})
        await anyio.sleep(1.0)
        rows: list[dict[str, Any]] = [
            {"sessions": 0, "rss_mb": round(rss_mb(proc.pid), 1), "live": await live_sessions(base, keys)}
        ]
        opened: list[int] = []
        errors: list[str] = []
        release = anyio.Event()
        gate = anyio.Semaphore(parallel)

        async def open_one(key: str) -> None:
            async with gate:
                up = anyio.Event()
                tg.start_soon(hold_session, url, key, opened, errors, up, release)
                with anyio.fail_after(120):
                    await up.wait()

        async with anyio.create_task_group() as tg:
            made = 0
            for step in steps:
                t0 = time.perf_counter()
                async with anyio.create_task_group() as opening:  # ``parallel`` at a time
                    for i in range(made, step):
                        opening.start_soon(open_one, keys[principals[i]])
                made = step
                await anyio.sleep(1.0)  # let the last replies settle
                row = {
                    "sessions": step,
                    "open_s": round(time.perf_counter() - t0, 2),
                    "rss_mb": round(rss_mb(proc.pid), 1),
                    "live": await live_sessions(base, keys),
                    "errors": len(errors),
                }
                rows.append(row)
                log(f"sessions: {row}")
            release.set()
    base_rss = rows[0]["rss_mb"]
    for r in rows[1:]:
        r["rss_kb_per_session"] = round((r["rss_mb"] - base_rss) * 1024 / r["sessions"], 1)
    steps_rows = rows[1:]
    return {
        "rows": rows,
        "errors": len(errors),
        "error_samples": errors[:5],
        "fit_rss_mb": fit(
            [float(r["sessions"]) for r in steps_rows], [float(r["rss_mb"]) for r in steps_rows]
        ),
        "fit_rss_mb_over_baseline": fit(
            [float(r["sessions"]) for r in steps_rows], [float(r["rss_mb"]) - base_rss for r in steps_rows]
        ),
    }


async def live_sessions(base: str, keys: dict[str, str]) -> int | None:
    async with httpx.AsyncClient(
        timeout=60, headers={"Authorization": f"Bearer {keys['growth-admin']}"}
    ) as hc:
        r = await hc.get(base + "/api/state")
    return r.json().get("owned", {}).get("sessions") if r.status_code == 200 else None


# -- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    load_before = os.getloadavg()
    sizes = [int(x) for x in args.upstreams.split(",") if x]
    steps = [int(x) for x in args.sessions.split(",") if x]
    rows = []
    for n in sizes:
        log(f"{n} upstreams x {args.tools} tools ...")
        row = await one_size(tmp / f"up{n}", n, args.tools, args.lists, args.rebuilds, args.page_size)
        log(json.dumps(row))
        rows.append(row)
    xs = [float(r["upstreams"]) for r in rows]
    fits = {
        col: fit(xs, [float(r[col]) if r[col] is not None else float("nan") for r in rows])
        for col in (
            "ready_s",
            "ready_cpu_s",
            "first_list_s",
            "list_p50_ms",
            "list_cpu_ms",
            "rebuild_ms",
            "rebuild_cpu_ms",
            "rebuild_gateway_ms",
            "rss_mb",
        )
    }
    sessions = await sessions_part(tmp / "sessions", steps, args.tools, args.parallel) if steps else None
    return {
        "benchmark": "growth",
        "settings": vars(args),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "upstreams": {"rows": rows, "fits": fits},
        "sessions": sessions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstreams", default="5,10,25,50", help="upstream counts, comma-separated")
    ap.add_argument("--tools", type=int, default=40, help="tools per upstream (default 40)")
    ap.add_argument("--lists", type=int, default=20, help="tools/list calls timed per size")
    ap.add_argument("--rebuilds", type=int, default=5, help="list changes timed per size")
    ap.add_argument("--sessions", default="100,250,500,1000", help="idle session steps ('' to skip)")
    ap.add_argument("--parallel", type=int, default=8, help="sessions being opened at once")
    ap.add_argument(
        "--page-size", type=int, help="the gateway's [mcp] list_page_size (default: the config's default)"
    )
    ap.add_argument("--workdir", type=Path, help="keep configs, logs and audit databases here")
    args = ap.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = anyio.run(run, args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="symbi-growth-") as d:
            result = anyio.run(run, args, Path(d))
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in result["settings"].items()}
    print(json.dumps(result, indent=2))
    sessions = result["sessions"]
    sys.exit(1 if sessions is not None and sessions["errors"] else 0)


if __name__ == "__main__":
    main()
