"""The scheduler sheds calls and ``/metrics`` says so: ``symbi_scheduler_refused_total``.

A real gateway over streamable HTTP (uvicorn, API keys, the repo's policy, server-everything
over stdio) with one global slot, a queue of two and one queued call per principal. Alice's
slow call holds the slot and her echo waits; her further echoes are refused at her queue share
(``principal_queue_full``). Bob's echo fills the queue; carol's echoes are refused at the full
queue (``queue_full``). The scrape counts exactly the refusals the clients were answered with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from gateway.errors import SchedulerBusy
from gateway.runtime.scheduler import LEVELS, Scheduler
from tests.server.http.conftest import Running, bearer, everything_config, make_keys, run_server
from tests.server.http.test_fastlane import call, replies
from tests.server.http.test_metrics import samples
from tests.server.http.test_principal_fairness import _post, _session

LONG = "everything__trigger-long-running-operation"
SLOW_S = 5.0  # holds the one slot while every refusal below is made (each takes milliseconds)
ALICE_REFUSED, CAROL_REFUSED = 3, 2
RUNTIME = """[runtime]
max_in_flight = 1
queue_limit = 2
max_in_flight_per_principal = 1
queue_limit_per_principal = 1
"""


def _call(run: Running, key: str, sid: str, rid: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """One tools/call on its own connection (so calls can wait side by side); its result."""
    with httpx.Client(timeout=120) as client:
        r = _post(client, run, call(rid, name, args), key, sid)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = replies(r)[-1]["result"]
    return result


def _code(result: dict[str, Any]) -> str | None:
    """The gateway's error code of a call's result, None when it was answered."""
    return result["_meta"]["symbi/error"]["code"] if result.get("isError") else None


def _until(done: Callable[[], bool], sched: Scheduler) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, (sched.in_flight, sched.queue_depth())
        time.sleep(0.01)


def test_refused_calls_are_counted_on_metrics_by_reason(tmp_path: Path) -> None:
    cfg = everything_config(tmp_path, top_extra=RUNTIME)
    keys = make_keys(cfg)
    with run_server(cfg) as run, httpx.Client(timeout=60) as client, ThreadPoolExecutor(3) as pool:
        gateway = run.state.gateway
        assert gateway is not None
        sched, level = gateway.runtime.scheduler, str(gateway.config.runtime.default_priority)
        alice, bob, carol = (_session(client, run, k) for k in (keys.admin, keys.user, keys.other_user))
        echo = {"message": "hi"}
        waiting: list[Future[dict[str, Any]]] = [
            pool.submit(_call, run, keys.admin, alice, 1, LONG, {"duration": SLOW_S, "steps": 1})
        ]
        _until(lambda: sched.principal_in_flight("key:alice") == 1, sched)
        waiting.append(pool.submit(_call, run, keys.admin, alice, 2, "everything__echo", echo))
        _until(lambda: sched.principal_queued("key:alice") == 1, sched)
        alice_codes = [
            _code(_call(run, keys.admin, alice, 10 + i, "everything__echo", echo))
            for i in range(ALICE_REFUSED)
        ]
        waiting.append(pool.submit(_call, run, keys.user, bob, 3, "everything__echo", echo))
        _until(lambda: sched.queue_depth() == sched.queue_limit, sched)
        carol_codes = [
            _code(_call(run, keys.other_user, carol, 20 + i, "everything__echo", echo))
            for i in range(CAROL_REFUSED)
        ]
        assert not waiting[0].done()  # every refusal was made while the slot was held
        assert [_code(f.result(timeout=120)) for f in waiting] == [None, None, None]  # the waiters ran
        text = client.get(run.base + "/metrics").text
        status = client.get(run.base + "/api/status", headers=bearer(keys.admin)).json()
    assert alice_codes == [SchedulerBusy.code] * ALICE_REFUSED
    assert carol_codes == [SchedulerBusy.code] * CAROL_REFUSED
    refused = {
        (dict(labels)["priority"], dict(labels)["reason"]): v
        for (name, labels), v in samples(text).items()
        if name == "symbi_scheduler_refused_total"
    }
    want = {(str(p), r): 0.0 for p in range(LEVELS) for r in ("queue_full", "principal_queue_full")}
    want[(level, "principal_queue_full")] = float(ALICE_REFUSED)
    want[(level, "queue_full")] = float(CAROL_REFUSED)
    assert refused == want
    # the same count /api/status shows (one definition: the scheduler's)
    assert status["resource_utilization"]["scheduler"]["refused_per_principal"] == ALICE_REFUSED
