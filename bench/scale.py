"""What shared state adds to one call: the state round trips a replica makes, against the
in-process / SQLite defaults measured in the same run (one JSON document).

    python bench/scale.py [--n 2000]

Starts its own redis-server and PostgreSQL on 127.0.0.1 (random ports, temp folders; the
Debian packages of `make state-engines`). Measured per call of the hot path:
- rate limit: ``RedisRateLimiter.acquire`` (one Lua round trip) vs ``LocalRateLimiter``;
- approvals: the verifier's ``version()`` poll and a tool-record read, PostgreSQL vs SQLite
  (these run per refresh / per poll, not per call: shown for the projection);
- API key lookup (per HTTP request): PostgreSQL vs the JSON file.
- calls/s through HAProxy: 1 replica on the embedded default (the baseline), then 1 and 2
  replicas on Redis + PostgreSQL, C clients each on its own session (``--calls``, ``--clients``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._common import ROOT, latency_summary, text_of
from gateway.policy.counters import CallCounters
from gateway.server.auth import ApiKeyStore
from gateway.state.limiter import LocalRateLimiter, RedisRateLimiter
from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import PgToolStateStore, Postgres
from gateway.verify.state import ToolStateStore
from tests.state.engines import HAProxy, replica
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine

DEF = {"name": "echo", "inputSchema": {"type": "object"}}


async def _times(fn: Callable[[int], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


def _stimes(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _pair(shared: list[float], local: list[float]) -> dict[str, Any]:
    s, b = latency_summary(shared), latency_summary(local)
    return {"shared": s, "default": b, "added_p50_ms": round(s["p50_ms"] - b["p50_ms"], 3)}


@contextlib.contextmanager
def _engines() -> Iterator[tuple[Path, RedisEngine, PgEngine]]:
    """A private Redis and PostgreSQL in a fresh temp folder, stopped and removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="symbi-bench-scale-"))
    os.chmod(folder, 0o755)
    redis, pg = RedisEngine(folder / "r"), PgEngine(folder / "pg")
    (folder / "r").mkdir()
    (folder / "pg").mkdir()
    redis.start()
    pg.start()
    try:
        yield folder, redis, pg
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def main(n: int) -> dict[str, Any]:
    with _engines() as (folder, redis, pg):
        out: dict[str, Any] = {"bench": "scale", "n": n, "python": platform.python_version()}
        shared_rl = RedisRateLimiter(redis.url, CallCounters(), timeout_s=2)
        local_rl = LocalRateLimiter(CallCounters())
        out["rate_limit"] = _pair(
            await _times(lambda i: shared_rl.acquire(f"p{i % 50}", "t", 10_000), n),
            await _times(lambda i: local_rl.acquire(f"p{i % 50}", "t", 10_000), n),
        )
        await shared_rl.aclose()
        pool = Postgres(pg.url, timeout_s=2).open()
        pgs, lite = PgToolStateStore(pool), ToolStateStore(folder / "tools.db")
        for s in (pgs, lite):
            s.observe(
                "u",
                "echo",
                "u__echo",
                DEF,
                "h",
                status="pinned",
                reason=None,
                key_fingerprint=None,
                pin_if_new=True,
            )
        out["approvals_version_poll"] = _pair(
            _stimes(lambda i: pgs.version(), n), _stimes(lambda i: lite.version(), n)
        )
        out["tool_record_read"] = _pair(
            _stimes(lambda i: pgs.get("u", "echo"), n), _stimes(lambda i: lite.get("u", "echo"), n)
        )
        pk, fk = PgApiKeyStore(pool), ApiKeyStore(folder / "keys.json")
        kp, _ = pk.create("alice", ("dev",))
        kf, _ = fk.create("alice", ("dev",))
        out["api_key_lookup"] = _pair(
            _stimes(lambda i: pk.lookup(kp), n), _stimes(lambda i: fk.lookup(kf), n)
        )
        lite.close()
        pool.close()
        return out


def _config(folder: Path, name: str, state: str) -> Path:
    data = json.loads((ROOT / "tests/assets/policy/test-data.json").read_text())
    data["symbi_data"]["default_rate_limit"] = 10**6  # every call still takes the limiter's round trip
    (folder / "data.json").write_text(json.dumps(data))
    path = folder / f"{name}.toml"
    path.write_text(f"""
[gateway]
data_dir = "{folder / name}"
log_level = "WARNING"
[policy]
path = "{ROOT / "policies.rego"}"
data = "{folder / "data.json"}"
[http]
access_log = false
[sandbox]
code_tools = false
[context]
enabled = false
[bus]
enabled = false
{state}
[servers.mut]
command = "{sys.executable}"
args = ["{ROOT / "tests/peers/mutable_server.py"}"]
verification = "warn"
""")
    return path


async def _drive(base: str, key: str, calls: int, clients: int) -> dict[str, Any]:
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    wrong = 0

    async def client(c: int) -> None:
        nonlocal wrong
        async with (
            httpx2.AsyncClient(headers={"x-api-key": key}, timeout=httpx2.Timeout(60)) as hc,
            streamable_http_client(base + "/mcp", http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            for i in range(calls // clients):
                path = f"/tmp/b-{c}-{i}"
                res = await s.call_tool("mut__read_path", {"path": path})
                if text_of(res) != f"read {path}":  # None for an error or no text
                    wrong += 1

    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t
    return {"calls_per_s": round(calls / wall, 1), "wrong_or_failed": wrong}


async def replicas(calls: int, clients: int, counts: tuple[int, ...]) -> dict[str, Any]:
    with _engines() as (folder, redis, pg):
        out: dict[str, Any] = {"calls": calls, "clients": clients}
        base_cfg = _config(folder, "embedded", "")
        key, _ = ApiKeyStore(folder / "embedded" / "api-keys.json").create("tester", ("tester",))
        with replica(base_cfg) as (b, _p):
            hp = HAProxy(folder, [int(b.rsplit(":", 1)[1])], port=0)
            hp.start()
            try:
                out["embedded_1"] = await _drive(hp.url, key, calls, clients)
            finally:
                hp.stop()
        state = f'[state]\nredis_url = "{redis.url}"\npostgres_url = "{pg.url}"'
        pool = Postgres(pg.url, timeout_s=5).open()
        skey, _ = PgApiKeyStore(pool).create("tester", ("tester",))
        pool.close()
        for n in counts:
            cfgs = [_config(folder, f"shared-{n}-{i}", state) for i in range(n)]
            with contextlib.ExitStack() as stack:
                bases = [stack.enter_context(replica(c))[0] for c in cfgs]
                hp = HAProxy(folder, [int(b.rsplit(":", 1)[1]) for b in bases])
                hp.start()
                stack.callback(hp.stop)
                got = await _drive(hp.url, skey, calls, clients)
            got["ratio_to_embedded_1"] = round(got["calls_per_s"] / out["embedded_1"]["calls_per_s"], 3)
            out[f"shared_{n}"] = got
        return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="round trips per state operation")
    ap.add_argument("--calls", type=int, default=600, help="calls through HAProxy per setup (0: skip)")
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--replicas", default="1,2,3", help="replica counts on shared state")
    args = ap.parse_args()
    result = asyncio.run(main(args.n))
    if args.calls:
        counts = tuple(int(x) for x in args.replicas.split(","))
        result["through_haproxy"] = asyncio.run(replicas(args.calls, args.clients, counts))
    print(json.dumps(result, indent=2))
