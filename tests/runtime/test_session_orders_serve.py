"""An operator's action on a *session* agent reaches the process holding the session
(``gateway.runtime.sessionorders``): two real ``symbi serve`` replicas on one real Redis and
PostgreSQL, a real MCP client on replica A, the admin request sent to replica B. Before, B
answered 404 (the agent unknown there) and the client on A kept calling.

Fail closed: an id no process holds is a 404 naming why; Redis down is a 503
``state_unavailable`` (the action refused, never dropped).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.state.pgkeys import PgApiKeyStore
from gateway.state.postgres import Postgres
from tests.conftest import ROOT, write_config
from tests.state.conftest import postgres_engine, redis_engine  # noqa: F401 - the engines' fixtures
from tests.state.engines import Postgres as PgEngine
from tests.state.engines import Redis as RedisEngine
from tests.state.engines import enterable, replica
from tests.state.test_replicas import _code, replica_toml, session

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BOUND_S = 30.0  # the bound of each wait (a renewal, an order taken), not a timing assertion


@pytest.fixture
def two(tmp_path: Path, redis_engine: RedisEngine, postgres_engine: PgEngine) -> Iterator[dict[str, Any]]:  # noqa: F811
    """Two replicas (base URL, pid), a caller's key (principal "tester") and an admin's."""
    enterable(tmp_path)  # the upstream runs as the unprivileged upstream user in the config's folder
    keys = PgApiKeyStore(Postgres(postgres_engine.url, timeout_s=2).open(), owns=True)
    caller, _ = keys.create("tester", ("tester",))
    admin, _ = keys.create("ops-admin", ("admin",))
    keys.close()
    configs = []
    for i in range(2):
        toml = replica_toml(tmp_path / f"data-{i}", ROOT / "policies.rego", ROOT / "tests/assets/policy/test-data.json",
                            redis_engine, postgres_engine, tmp_path)  # fmt: skip
        configs.append(write_config(tmp_path, toml, name=f"replica-{i}.toml"))
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(replica(c)) for c in configs]
        yield {
            "bases": [b for b, _ in started],
            "pids": [p.pid for _, p in started],
            "caller": caller,
            "admin": admin,
        }
    if redis_engine.proc is None:  # a test stopped it
        redis_engine.start()


async def _admin(
    base: str, key: str, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(headers={"x-api-key": key}, timeout=10) as c:
        return await c.request(method, base + "/api" + path, json=body)


async def _my_agent(base: str, admin: str) -> str:
    """The id of the caller's session agent on ``base`` (the only session agent there)."""
    rows = (await _admin(base, admin, "GET", "/agents")).json()["agents"]
    [row] = [r for r in rows if r["principal"] == "tester"]
    return str(row["id"])


async def _until(what: str, check: Any) -> Any:
    deadline = time.monotonic() + BOUND_S
    while not (got := await check()):
        assert time.monotonic() < deadline, f"not within {BOUND_S:g} s: {what}"
        await anyio.sleep(0.3)
    return got


async def test_a_terminate_sent_to_another_replica_ends_the_session_agent(two: dict[str, Any]) -> None:
    (base_a, base_b), (pid_a, _), admin = two["bases"], two["pids"], two["admin"]
    async with session(base_a, two["caller"]) as s:
        assert _code(await s.call_tool("mut__echo", {"message": "before"})) is None
        agent = await _my_agent(base_a, admin)

        async def passed(action: str) -> httpx.Response | None:
            r = await _admin(base_b, admin, "POST", f"/agents/{agent}/{action}", {"reason": "odd"})
            return r if r.status_code != 404 else None  # A writes its record at once, then every 3 s

        r = await _until("the suspend passed to A", lambda: passed("suspend"))
        assert r.status_code == 202 and f":{pid_a}:" in r.json()["holder"], r.text

        async def row() -> dict[str, Any]:
            rows = (await _admin(base_a, admin, "GET", "/agents")).json()["agents"]
            return dict(next(x for x in rows if x["id"] == agent))

        async def pending() -> bool:  # a Ready agent is suspended at its next task
            return (await row())["suspend_pending"] is not None

        await _until("the suspension held on A", pending)
        assert _code(await s.call_tool("mut__echo", {"message": "suspended"})) is not None
        assert (await row())["state"] == "Suspended"
        r = await _admin(base_b, admin, "POST", f"/agents/{agent}/resume")
        assert r.status_code == 202, r.text
        await _until("resumed on A", lambda: _is(row, "Ready"))
        assert _code(await s.call_tool("mut__echo", {"message": "resumed"})) is None

        r = await _admin(base_b, admin, "POST", f"/agents/{agent}/terminate", {"reason": "done"})
        assert r.status_code == 202, r.text

        async def refused() -> bool:
            return _code(await s.call_tool("mut__echo", {"message": "after"})) == "agent_terminated"

        await _until("the client on A refused", refused)
        events = (await _admin(base_a, admin, "GET", "/audit/query?type=agent.terminate_requested")).json()
        [event] = events["events"]
        assert event["principal"] == "ops-admin" and event["details"]["via"].endswith("data-1")

        # ended: its record leaves the board, and another action on it finds no holder
        async def gone() -> bool:
            r = await _admin(base_b, admin, "POST", f"/agents/{agent}/suspend")
            return r.status_code == 404 and r.json()["error"] == "not_found"

        await _until("no process holds it any more", gone)


async def _is(read: Any, want: str) -> bool:
    return bool((await read())["state"] == want)


async def test_an_unknown_id_is_a_404_and_redis_down_a_503(
    two: dict[str, Any],
    redis_engine: RedisEngine,  # noqa: F811
) -> None:
    base_b, admin = two["bases"][1], two["admin"]
    r = await _admin(base_b, admin, "POST", "/agents/agt-aaaaaaaaaaaaaaaaaaaa/terminate")
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
    redis_engine.stop()
    r = await _admin(base_b, admin, "POST", "/agents/agt-aaaaaaaaaaaaaaaaaaaa/terminate")
    assert r.status_code == 503 and r.json()["code"] == "state_unavailable", r.text


async def test_a_suspension_on_one_replica_refuses_the_key_on_the_other(two: dict[str, Any]) -> None:
    """Attack: suspended on replica A, the caller reconnects through replica B (before: a fresh
    agent there, answered). The principal's suspension is on Redis (gateway/runtime/holds.py):
    B refuses it; an operator's clear answered by B lets it call on A again."""
    (base_a, base_b), admin = two["bases"], two["admin"]
    async with session(base_a, two["caller"]) as on_a:
        assert _code(await on_a.call_tool("mut__echo", {"message": "before"})) is None
        agent = await _my_agent(base_a, admin)
        r = await _admin(base_a, admin, "POST", f"/agents/{agent}/suspend", {"reason": "looks odd"})
        assert r.status_code == 200, r.text
        async with session(base_b, two["caller"]) as on_b:
            assert _code(await on_b.call_tool("mut__echo", {"message": "elsewhere"})) == "agent_suspended"
            listed = (await _admin(base_b, admin, "GET", "/principals")).json()["suspended"]
            assert [h["principal"] for h in listed] == ["key:tester"]
            r = await _admin(base_b, admin, "POST", "/principals/resume", {"principal": "key:tester"})
            assert r.status_code == 200, r.text
            assert _code(await on_b.call_tool("mut__echo", {"message": "cleared"})) is None

        async def answered() -> bool:  # A resumes its own agent when it sees the clear
            return _code(await on_a.call_tool("mut__echo", {"message": "again"})) is None

        await _until("the client on A answered again", answered)
