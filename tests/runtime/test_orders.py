"""An operator's suspend / resume / terminate of a hosted agent reaches the process holding its
lease, whichever process the admin request lands on (``gateway.runtime.orders``): two gateways
on one real Redis with real bwrap runs, the admin API's own handlers. Before, the process
without the lease answered 404 (it never heard of the agent) and nothing happened.

Fail closed: no holder is a 409 naming why, Redis down is a 503 ``state_unavailable`` (the
action refused, not dropped), and the holder acts only on well-formed, fresh orders.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
import redis
from anyio import wait_all_tasks_blocked
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import Receive, Scope, Send

from gateway.runtime import AgentState
from gateway.runtime.hosted import HostedAgents
from gateway.server.admin import admin_routes
from gateway.state.leases import RENEW_S
from tests.conftest import free_port
from tests.runtime._leases import NAME, START_S, _running, _until, fresh, marked, replica  # noqa: F401 - the fixture
from tests.runtime.test_core import Recorder
from tests.runtime.test_leased import one_of_two_runs_it
from tests.state.conftest import redis_engine  # noqa: F401 - the engine's fixture
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio
ADMIN = "admin-alice"
ORDERS = "symbi:lease:orders:"  # gateway.state.leases.ORDERS: the orders left for a holder
TAKEN_S = 2 * RENEW_S + 1  # the holder takes an order after its next renewal (bound of the wait)


def _api(h: HostedAgents, rec: Recorder) -> Callable[..., Awaitable[httpx.Response]]:
    """POST to ``h``'s admin API as ``ADMIN`` (the auth middleware's principal put in the scope)."""
    gw = SimpleNamespace(hosted=h, runtime=h.runtime, events=rec, audit=None)  # (no audit log here)
    app = Starlette(routes=[Mount("/api", routes=admin_routes(SimpleNamespace(gateway=gw, config=h.config)))])  # type: ignore[arg-type]

    async def as_admin(scope: Scope, receive: Receive, send: Send) -> None:
        scope["symbi.principal"] = SimpleNamespace(id=ADMIN)
        await app(scope, receive, send)

    async def post(path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=as_admin), base_url="http://gw") as c:
            return await c.post("/api" + path, json=body)

    return post


def _state(h: HostedAgents) -> AgentState | None:
    agent = h.runtime.agents.by_name(NAME)
    return agent.state if agent is not None else None


def _asked(rec: Recorder, event: str) -> list[tuple[dict[str, Any], str | None]]:
    return [(d, p) for t, d, p, _ in rec.events if t == event]


async def test_an_action_sent_to_the_process_without_the_lease_takes_effect_on_the_holder(
    tmp_path: Path,
    fresh: Redis,  # noqa: F811 - the imported fixture
) -> None:
    mark = f"6201.{os.getpid()}"
    async with one_of_two_runs_it(tmp_path, fresh.url, mark) as (a, ra, b, rb):
        (holder, hrec), (other, orec) = ((a, ra), (b, rb)) if _running(a) else ((b, rb), (a, ra))
        assert holder.leased is not None and other.leased is not None
        post = _api(other, orec)

        r = await post(f"/agents/{NAME}/suspend", {"reason": "looks odd"})
        assert r.status_code == 202, r.text
        assert r.json()["holder"] == holder.leased.board.owner
        await _until("suspended on the holder", lambda: _state(holder) is AgentState.SUSPENDED, TAKEN_S)
        [(doc, who)] = _asked(hrec, "agent.suspend_requested")
        assert who == ADMIN and doc["by"] == ADMIN and doc["reason"] == "looks odd"
        assert doc["via"] == other.leased.board.owner and doc["result"] == "suspended"
        assert _asked(orec, "agent.suspend_requested")[0][1] == ADMIN  # the request, where it landed

        r = await post(f"/agents/{NAME}/resume")
        assert r.status_code == 202, r.text
        await _until("resumed on the holder", lambda: _state(holder) is AgentState.RUNNING, TAKEN_S)

        agent = holder.runtime.agents.by_name(NAME)
        assert agent is not None
        r = await post(f"/agents/{agent.id}/terminate", {"reason": "done"})  # by id, as listed
        assert r.status_code == 202, r.text
        await _until("terminated on the holder", lambda: _state(holder) is AgentState.TERMINATED, TAKEN_S)
        [(doc, who)] = _asked(hrec, "agent.terminate_requested")
        assert who == ADMIN and doc["agent"] == agent.id and doc["result"].startswith("terminat")
        await _until("its process stopped", lambda: not marked(mark), START_S)
        assert other.runtime.agents.by_name(NAME) is None  # never run there


async def test_no_holder_is_a_409_and_redis_down_a_503(tmp_path: Path, fresh: Redis) -> None:  # noqa: F811
    idle = replica(tmp_path / "a", fresh.url, "6202", Recorder())  # never run: no process holds it
    r = await _api(idle, Recorder())(f"/agents/{NAME}/suspend")
    assert r.status_code == 409 and r.json()["error"] == "not_running", r.text
    assert "no process holds" in r.json()["reason"]
    assert redis.Redis.from_url(fresh.url).exists(ORDERS + NAME) == 0  # nothing left for later

    cut = replica(tmp_path / "b", f"redis://127.0.0.1:{free_port()}/0", "6203", Recorder())
    r = await _api(cut, Recorder())(f"/agents/{NAME}/terminate")
    assert r.status_code == 503 and r.json()["code"] == "state_unavailable", r.text


async def test_the_holder_acts_only_on_well_formed_fresh_orders(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh: Redis,  # noqa: F811
) -> None:
    mark = f"6204.{os.getpid()}"
    rec = Recorder()
    a = replica(tmp_path / "a", fresh.url, mark, rec)
    assert a.leased is not None
    r = redis.Redis.from_url(fresh.url)
    take, taken = a.leased.board.take_orders, anyio.Event()

    async def take_then_tell(name: str) -> tuple[list[bytes], float]:
        got = await take(name)
        if got[0]:  # these orders: carried out (or not) in the same step as this returns
            taken.set()
        return got

    monkeypatch.setattr(a.leased.board, "take_orders", take_then_tell)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        await _until("it runs", lambda: bool(marked(mark)) and _running(a), START_S)
        stale = {"action": "terminate", "by": ADMIN, "reason": "", "via": "x", "at": time.time() - 3600}
        bads = ("not json", json.dumps(["terminate"]), json.dumps({"action": "terminate"}),
                json.dumps({**stale, "action": "kill"}), json.dumps(stale))  # fmt: skip
        r.rpush(ORDERS + NAME, *bads)  # one command: a take in between does not split them
        with anyio.fail_after(TAKEN_S):
            await taken.wait()
        await wait_all_tasks_blocked()  # the holder has acted on them (or not)
        assert _running(a) and r.exists(ORDERS + NAME) == 0
        assert not [t for t, *_ in rec.events if t.endswith("_requested")]
        tg.cancel_scope.cancel()


def test_an_order_must_be_whole_and_fresh() -> None:
    from gateway.runtime.orders import ORDER_TTL_S, parse_order

    now = time.time()
    good = {"action": "suspend", "by": ADMIN, "reason": "r", "via": "p", "at": now}
    assert parse_order(json.dumps(good)) is not None
    for bad in (
        {**good, "by": ""},
        {**good, "reason": 1},
        {**good, "at": True},
        {**good, "at": now - ORDER_TTL_S - 1},
        {**good, "at": 10**400},  # past a float: OverflowError ended the orders loop
    ):
        assert parse_order(json.dumps(bad)) is None
