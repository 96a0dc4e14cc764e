"""One principal's slow calls do not hold another principal's quick call (noisy neighbour).

A real gateway over streamable HTTP (uvicorn, API keys, the repo's policy, server-everything
over stdio) at ``runtime.max_in_flight = 20`` and the default
``runtime.max_in_flight_per_principal`` (16). Principal A (the admin key alice) opens 20 slow
calls over 4 sessions (5 each: every session agent is under its own ``max_concurrent_calls``
of 8); principal B (the key bob) then calls ``echo``. With the per-principal cap A holds 16
slots and queues 4, so B's call finds a free slot at once; without it A held all 20 and B
waited for A's calls to end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.server.http.conftest import Keys, Running, bearer, everything_config, make_keys, run_server
from tests.server.http.test_fastlane import HEADERS, INIT, INITIALIZED, call, replies

LONG = "everything__trigger-long-running-operation"
SLOW_S = 6.0  # one of A's calls; B's answer must come well before any of them ends
A_SESSIONS, A_CALLS_PER_SESSION = 4, 5
GLOBAL_SLOTS = A_SESSIONS * A_CALLS_PER_SESSION  # A alone could fill max_in_flight without a cap


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Keys]]:
    tmp = tmp_path_factory.mktemp("fairness")
    cfg = everything_config(tmp, top_extra=f"[runtime]\nmax_in_flight = {GLOBAL_SLOTS}\n")
    keys = make_keys(cfg)
    with run_server(cfg) as run:
        yield run, keys


def _post(client: httpx.Client, run: Running, body: Any, key: str, sid: str | None = None) -> httpx.Response:
    h = {**HEADERS, **bearer(key)}
    if sid is not None:
        h["mcp-session-id"] = sid
    return client.post(run.mcp, content=json.dumps(body).encode(), headers=h)


def _session(client: httpx.Client, run: Running, key: str) -> str:
    r = _post(client, run, INIT, key)
    assert r.status_code == 200, r.text
    sid = r.headers["mcp-session-id"]
    assert _post(client, run, INITIALIZED, key, sid).status_code == 202
    return sid


def _slow(run: Running, key: str, sid: str, rid: int) -> float:
    """One of A's slow calls; when it was answered (perf_counter)."""
    with httpx.Client(timeout=120) as client:
        r = _post(client, run, call(rid, LONG, {"duration": SLOW_S, "steps": 1}), key, sid)
    assert r.status_code == 200, r.text
    assert "result" in replies(r)[-1], r.text
    return time.perf_counter()


def test_a_principal_filling_its_cap_does_not_hold_another_principals_echo(gw: tuple[Running, Keys]) -> None:
    run, keys = gw
    gateway = run.state.gateway
    assert gateway is not None
    sched = gateway.runtime.scheduler
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(GLOBAL_SLOTS) as pool:
        a_sids = [_session(client, run, keys.admin) for _ in range(A_SESSIONS)]
        b_sid = _session(client, run, keys.user)
        started = time.perf_counter()
        flood: list[Future[float]] = [
            pool.submit(_slow, run, keys.admin, sid, 100 + i * A_CALLS_PER_SESSION + j)
            for i, sid in enumerate(a_sids)
            for j in range(A_CALLS_PER_SESSION)
        ]
        # every one of A's calls has reached the scheduler: in flight or queued
        deadline = time.monotonic() + 30
        while sched.principal_in_flight("key:alice") + sched.principal_queued("key:alice") < GLOBAL_SLOTS:
            assert time.monotonic() < deadline, (sched.in_flight, sched.queue_depth())
            time.sleep(0.02)
        assert sched.principal_in_flight("key:alice") == 16  # the default cap, not all 20 slots
        t = time.perf_counter()
        r = _post(client, run, call(7, "everything__echo", {"message": "quick"}), keys.user, b_sid)
        answered = time.perf_counter()
        b_latency = answered - t
        assert r.status_code == 200 and "result" in replies(r)[-1], r.text
        assert not any(f.done() for f in flood)  # A's calls are all still running
        print(f"\nB's echo: {b_latency * 1000:.1f} ms while A holds {sched.principal_in_flight('key:alice')}")
        assert b_latency < 2.0
        ends = [f.result(timeout=120) for f in flood]  # A's calls all complete too
    assert all(end > answered for end in ends) and max(ends) - started < 4 * SLOW_S
    assert sched.in_flight == 0 and sched.queue_depth() == 0


def test_the_status_shows_the_per_principal_caps(gw: tuple[Running, Keys]) -> None:
    run, keys = gw
    r = httpx.get(run.base + "/api/status", headers=bearer(keys.admin), timeout=30)
    assert r.status_code == 200, r.text
    sched = r.json()["resource_utilization"]["scheduler"]
    assert (sched["max_in_flight_per_principal"], sched["queue_limit_per_principal"]) == (16, 256)
    assert sched["refused_per_principal"] == 0 and sched["max_in_flight"] == GLOBAL_SLOTS
