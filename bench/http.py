"""tools/call over streamable HTTP: through ``symbi serve`` vs directly to the same upstream.

    .venv/bin/python bench/http.py [--calls 300] [--per-client 40] [--rounds 2]

The upstream is npm server-everything in streamableHttp mode, forced onto 127.0.0.1 with a
``node -r`` preload (it binds all interfaces by default). Targets, measured interleaved in
the same run so the ratios survive a noisy shared machine:

* ``direct``        the client talks to server-everything itself (the baseline; SSE replies)
* ``gateway-sse``   through the gateway (API key auth on), SSE replies downstream
* ``gateway-json``  the same gateway with ``http.json_response = true``
* ``gateway-sse-stdio-upstream``  the gateway with the same server over stdio (separates the
  front's own cost from the gateway→upstream HTTP hop)

For each: 1 client (sequential calls) and 16 concurrent clients (one session each).
Every call carries a unique message and the reply must echo exactly it: any other reply
counts as misrouted. Prints one JSON document.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and "http.py" would shadow the
# standard library's http package (which httpx imports): drop that entry before any import.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo: bench._common

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from bench._common import EVERYTHING_JS, ROOT, everything_toml, free_port, write_http_gateway_config

PRELOAD = """// force every listen() onto loopback (server-everything binds all interfaces)
const http = require("http");
const orig = http.Server.prototype.listen;
http.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" || typeof args[0] === "string") {
    const port = args[0];
    const cb = args.find((a) => typeof a === "function");
    return orig.call(this, { port: Number(port), host: "127.0.0.1" }, cb);
  }
  if (args[0] && typeof args[0] === "object") { args[0].host = "127.0.0.1"; }
  return orig.apply(this, args);
};
"""


CLIENTS = 16  # the concurrent run's clients (one session and one API key each)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@contextlib.contextmanager
def proc(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_http(url: str, ok: set[int], timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, headers=headers or {}).status_code in ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not come up")


GATEWAY_MAIN = """
import sys
from pathlib import Path
from gateway.config import load_config
from gateway.cli import setup_logging
from gateway.server.http import run_http
cfg = load_config(Path(sys.argv[1]), {})
setup_logging("WARNING", "text")
run_http(cfg)
"""


class Target:
    """``headers`` for every client, or ``per_client`` (client ``c`` uses entry ``c % len``):
    one API key per client keeps each principal under ``http.max_sessions_per_principal``."""

    def __init__(
        self,
        name: str,
        url: str,
        tool: str,
        headers: dict[str, str],
        per_client: list[dict[str, str]] | None = None,
    ) -> None:
        self.name, self.url, self.tool, self.headers = name, url, tool, headers
        self.per_client = per_client or [headers]

    def headers_for(self, client: int) -> dict[str, str]:
        return self.per_client[client % len(self.per_client)]


class Barrier:
    """All clients start the measured phase together (session set-up is not measured)."""

    def __init__(self, n: int) -> None:
        self.n, self.ready, self.go, self.start = n, 0, anyio.Event(), 0.0

    async def wait(self) -> None:
        self.ready += 1
        if self.ready == self.n:
            self.start = time.perf_counter()
            self.go.set()
        await self.go.wait()


async def client_loop(
    t: Target, n: int, tag: str, lat: list[float], bad: list[str], barrier: Barrier, client: int = 0
) -> None:
    async with (
        httpx2.AsyncClient(headers=t.headers_for(client), timeout=httpx2.Timeout(60)) as hc,
        streamable_http_client(t.url, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        for _ in range(3):  # warm-up
            await s.call_tool(t.tool, {"message": "warm"})
        await barrier.wait()
        for i in range(n):
            msg = f"{tag}-{i}-{uuid.uuid4().hex}"
            t0 = time.perf_counter()
            # send_request: skip client-side output-schema validation on both paths alike
            res = await s.send_request(
                types.CallToolRequest(
                    params=types.CallToolRequestParams(name=t.tool, arguments={"message": msg})
                ),
                types.CallToolResult,
            )
            lat.append(time.perf_counter() - t0)
            text = (
                res.content[0].text if res.content and isinstance(res.content[0], types.TextContent) else ""
            )
            if res.is_error or text != f"Echo: {msg}":
                bad.append(text[:80])


async def measure(t: Target, clients: int, per_client: int) -> dict[str, Any]:
    lat: list[float] = []
    bad: list[str] = []
    barrier = Barrier(clients)
    ends: list[float] = []

    async def one(c: int) -> None:
        await client_loop(t, per_client, f"{t.name}-c{c}", lat, bad, barrier, c)
        ends.append(time.perf_counter())

    async with anyio.create_task_group() as tg:
        for c in range(clients):
            tg.start_soon(one, c)
    wall = max(ends) - barrier.start
    ms = [x * 1000 for x in lat]
    return {
        "calls": len(lat),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        # measured phase only: from the moment every client is ready to the last reply
        # (session close of the last client is included: a few ms)
        "calls_per_s": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "wall_s": round(wall, 3),
        "misrouted_or_failed": len(bad),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=300, help="calls for the 1-client run")
    ap.add_argument("--per-client", type=int, default=40, help="calls per client for the 16-client run")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians reported)")
    args = ap.parse_args()
    # a plain SIGTERM must still run the clean-ups below (no orphaned servers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from gateway.server.auth import ApiKeyStore

    tmp = Path(tempfile.mkdtemp(prefix="symbi-bench-http-"))
    (tmp / "loopback.cjs").write_text(PRELOAD)
    # one API key (principal) per client: the default per-principal session quota stays on
    names = tuple(f"bench-{c:03d}" for c in range(CLIENTS))
    store = ApiKeyStore(tmp / "data" / "api-keys.json")
    per_client = [{"Authorization": f"Bearer {store.create(n, ('developer',))[0]}"} for n in names]
    with contextlib.ExitStack() as stack:
        targets = _start_targets(stack, tmp, names, per_client)
        runs: dict[str, list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for t in targets:  # interleaved: each round measures every target once
                runs.setdefault(f"{t.name}/c1", []).append(anyio.run(measure, t, 1, args.calls))
                runs.setdefault(f"{t.name}/c16", []).append(anyio.run(measure, t, CLIENTS, args.per_client))
    results = _medians(runs)
    ratios = {}
    for mode in ("gateway-sse", "gateway-json", "gateway-sse-stdio-upstream"):
        for c in ("c1", "c16"):
            d, g = results[f"direct/{c}"], results[f"{mode}/{c}"]
            ratios[f"{mode}/{c}"] = {
                "p50_ratio": round(g["p50_ms"] / d["p50_ms"], 2),
                "throughput_ratio": round(g["calls_per_s"] / d["calls_per_s"], 2),
            }
    print(
        json.dumps(
            {
                "bench": "http",
                "upstream": "server-everything streamableHttp (127.0.0.1), echo",
                "gateway": "symbi serve: API key auth, Rego policy, signed audit log, verification warn; upstream over HTTP",
                "rounds": args.rounds,
                "results": results,
                "vs_direct": ratios,
                "misrouted_total": sum(r["misrouted_or_failed"] for r in results.values()),
            },
            indent=2,
        )
    )
    return 0


def _start_targets(
    stack: contextlib.ExitStack, tmp: Path, names: tuple[str, ...], per_client: list[dict[str, str]]
) -> list[Target]:
    """Start the upstream and the three gateways (stopped when ``stack`` closes), each ready,
    and return the four targets."""
    up_port, sse_port, json_port, stdio_port = free_port(), free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/mcp"
    env = {**os.environ, "PORT": str(up_port)}
    py = sys.executable
    stack.enter_context(
        proc(
            ["node", "-r", str(tmp / "loopback.cjs"), str(EVERYTHING_JS), "streamableHttp"],
            tmp / "upstream.log",
            env,
        )
    )
    wait_http(upstream, {400, 405, 406, 200})
    gateways = (
        ("gw-sse", sse_port, upstream, False),
        ("gw-json", json_port, upstream, True),
        ("gw-stdio-up", stdio_port, None, False),  # same gateway, upstream over stdio
    )
    for name, port, up_url, js in gateways:
        cfg = write_http_gateway_config(
            tmp / name,
            port,
            everything_toml("warn", up_url),
            names,
            json_response=js,
            max_sessions=1000,
            max_connections=64,
            data_dir=tmp / "data",
        )
        stack.enter_context(
            proc(
                [py, "-c", GATEWAY_MAIN, str(cfg)],
                tmp / f"{name}.log",
                {**os.environ, "PYTHONPATH": str(ROOT)},
            )
        )
        wait_http(f"http://127.0.0.1:{port}/readyz", {200})
    auth = per_client[0]
    return [
        Target("direct", upstream, "echo", {}),
        Target("gateway-sse", f"http://127.0.0.1:{sse_port}/mcp", "everything__echo", auth, per_client),
        Target("gateway-json", f"http://127.0.0.1:{json_port}/mcp", "everything__echo", auth, per_client),
        Target(
            "gateway-sse-stdio-upstream",
            f"http://127.0.0.1:{stdio_port}/mcp",
            "everything__echo",
            auth,
            per_client,
        ),
    ]


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per target and client count: the rounds' median latencies and throughput, summed counts."""

    def med(rows: list[dict[str, Any]], k: str) -> float:
        return round(statistics.median(float(r[k]) for r in rows), 3)

    return {
        name: {
            "p50_ms": med(rows, "p50_ms"),
            "p99_ms": med(rows, "p99_ms"),
            "calls_per_s": med(rows, "calls_per_s"),
            "calls": sum(r["calls"] for r in rows),
            "misrouted_or_failed": sum(r["misrouted_or_failed"] for r in rows),
        }
        for name, rows in runs.items()
    }


if __name__ == "__main__":
    raise SystemExit(main())
