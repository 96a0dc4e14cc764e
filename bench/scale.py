"""What shared state adds to one call: the state round trips a replica makes, against the
in-process / SQLite defaults measured in the same run (one JSON document).

    python bench/scale.py [--n 2000]

Starts its own redis-server and PostgreSQL on 127.0.0.1 (random ports, temp folders; the
Debian packages of `make state-engines`). Measured per call of the hot path:
- rate limit: ``RedisRateLimiter.acquire`` (one Lua round trip) vs ``LocalRateLimiter``;
- approvals: the verifier's ``version()`` poll and a tool-record read, PostgreSQL vs SQLite
  (these run per refresh / per poll, not per call: shown for the projection);
- API key lookup (per HTTP request): PostgreSQL vs the JSON file.
Calls/s of 1-3 replicas behind HAProxy is not measured here yet (issue 17).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._common import latency_summary
from gateway.policy.counters import CallCounters
from gateway.server.auth import ApiKeyStore
from gateway.state.limiter import LocalRateLimiter, RedisRateLimiter
from gateway.state.postgres import PgApiKeyStore, PgToolStateStore, Postgres
from gateway.verify.state import ToolStateStore
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


async def main(n: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="symbi-bench-scale-"))
    os.chmod(folder, 0o755)
    redis, pg = RedisEngine(folder / "r"), PgEngine(folder / "pg")
    (folder / "r").mkdir()
    (folder / "pg").mkdir()
    redis.start()
    pg.start()
    try:
        out: dict[str, Any] = {"bench": "scale", "n": n, "python": platform.python_version()}
        shared_rl = RedisRateLimiter(redis.url, CallCounters(), timeout_s=2)
        local_rl = LocalRateLimiter(CallCounters())
        out["rate_limit"] = _pair(await _times(lambda i: shared_rl.acquire(f"p{i % 50}", "t", 10_000), n),
                                  await _times(lambda i: local_rl.acquire(f"p{i % 50}", "t", 10_000), n))
        await shared_rl.aclose()
        pool = Postgres(pg.url, timeout_s=2).open()
        pgs, lite = PgToolStateStore(pool), ToolStateStore(folder / "tools.db")
        for s in (pgs, lite):
            s.observe("u", "echo", "u__echo", DEF, "h", status="pinned", reason=None, key_fingerprint=None,
                      pin_if_new=True)
        out["approvals_version_poll"] = _pair(_stimes(lambda i: pgs.version(), n), _stimes(lambda i: lite.version(), n))
        out["tool_record_read"] = _pair(_stimes(lambda i: pgs.get("u", "echo"), n),
                                        _stimes(lambda i: lite.get("u", "echo"), n))
        pk, fk = PgApiKeyStore(pool), ApiKeyStore(folder / "keys.json")
        kp, _ = pk.create("alice", ("dev",))
        kf, _ = fk.create("alice", ("dev",))
        out["api_key_lookup"] = _pair(_stimes(lambda i: pk.lookup(kp), n), _stimes(lambda i: fk.lookup(kf), n))
        lite.close()
        pool.close()
        return out
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    print(json.dumps(asyncio.run(main(ap.parse_args().n)), indent=2))
