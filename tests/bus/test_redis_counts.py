"""The bus's caps on Redis (``gateway.bus.redis_counts``): two gateway processes sharing one
Redis (two ``Bus`` objects, each with its own connections, on one data dir as
``symbi serve --workers 2`` runs them) together admit at most each cap, and Redis down
refuses rather than admits. A real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

from gateway.bus.core import Bus
from gateway.bus.redis_backend import PREFIX
from gateway.context import Principal
from gateway.errors import BusError, BusQuotaExceeded, BusUnavailable
from tests.bus.conftest import RedisServer
from tests.bus.test_core import A, B, C, Env, Recorder

pytestmark = pytest.mark.anyio

A2 = Principal(id="team", agent="agent-a2", source="key")  # A's principal, on the other process
B2 = Principal(id="team", agent="agent-b2", source="key")
OPEN_KEYS = [PREFIX + k for k in ("open", "open:q", "open:n", "open:seq")]  # the open requests
BODY = "x" * 4000  # one message stores a bit more than 4000 bytes


@pytest.fixture
async def two(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Env]:
    env = Env("redis", tmp_path / "data", redis_server.url, Recorder())
    try:
        yield env
    finally:
        await env.close()


async def _two(env: Env, **kw: Any) -> tuple[Bus, Bus]:
    one, other = await env.bus(**kw), await env.bus(**kw)
    for bus, ps in ((one, (A, B, C)), (other, (A2, B2))):
        for p in ps:
            assert p.agent is not None
            await bus.register(p.agent, p.qualified)
    return one, other


async def test_the_bytes_a_principal_puts_on_the_bus_are_capped_across_processes(
    two: Env, redis_server: RedisServer
) -> None:
    # Bug: counted per process: N processes on one Redis admitted N times the cap.
    one, other = await _two(two, max_bytes_per_principal=10_000)  # two messages fit, not three
    await one.send(A, "agent-b", BODY)
    await other.send(A2, "agent-b", BODY)
    with pytest.raises(BusQuotaExceeded):  # the third of the principal's, wherever it is sent
        await other.send(A2, "agent-b", BODY)
    with pytest.raises(BusQuotaExceeded):
        await one.send(A, "agent-b", BODY)
    await one.send(C, "agent-b", BODY)  # another principal has its own
    # a publication counts once for its publisher across processes too
    with pytest.raises(BusQuotaExceeded):
        await other.publish(A2, "news", BODY)
    assert len(await one.receive(B, max_items=10)) == 3  # what was admitted is delivered
    r: Any = redis.Redis.from_url(redis_server.url)
    ttl = int(r.pttl(PREFIX + "vol:key:team"))  # counted in a key that goes by itself
    assert 0 < ttl <= 86_400_000 + 60_000
    redis_server.stop()  # fail closed: Redis down refuses, never admits uncounted
    with pytest.raises(BusUnavailable):
        await one.send(C, "agent-b", "x")
    with pytest.raises(BusUnavailable):
        await other.subscribe(B2, "news")


async def test_an_agents_subscriptions_are_capped_across_processes(two: Env) -> None:
    # Bug: each process read the agent's subscriptions, then added one: concurrent
    # subscriptions through two processes all passed the check.
    one, other = await _two(two, max_subscriptions=2)
    await other.register("agent-b", B.qualified)  # B, on both processes
    results: list[BaseException | None] = []

    async def subscribe(bus: Bus, n: int) -> None:
        try:
            await bus.subscribe(B, f"t{n}")
            results.append(None)
        except BusError as e:
            results.append(e)

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(subscribe, (one, other)[n % 2], n)
    assert results.count(None) == 2
    assert all(isinstance(e, BusQuotaExceeded) for e in results if e is not None)
    assert len((await one.backend.subscriptions())["agent-b"]) == 2
    await one.subscribe(B, next(iter((await one.backend.subscriptions())["agent-b"])))  # held: no new one


async def test_the_requests_an_agent_may_answer_are_shared_and_capped_across_processes(
    two: Env, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bug: kept per process: a request received through one process could not be answered
    # through another, and each process held the cap.
    monkeypatch.setattr("gateway.bus.core.MAX_OPEN_REQUESTS", 3)
    one, other = await _two(two)
    await other.register("agent-b", B.qualified)
    for n in range(4):
        with anyio.move_on_after(0.2):  # C stops waiting: its request stays open
            await one.request(C, "agent-b", n, timeout_s=30)
    got = [*await one.receive(B, max_items=2), *await other.receive(B, max_items=2)]
    assert [r.body for r in got] == [0, 1, 2, 3]
    with pytest.raises(BusError):  # past the cap of 3, in all: the oldest closed
        await other.reply(B, got[0].id, "too late")
    for r in got[1:]:  # answered through either process
        msg = await (one if r.body == 2 else other).reply(B, r.id, "done")
        assert msg.reply_to == r.id
    with pytest.raises(BusError):  # answered: no longer open, in any process
        await one.reply(B, got[1].id, "again")
    r0: Any = redis.Redis.from_url(redis_server.url)
    assert 0 < int(r0.pttl(OPEN_KEYS[3])) <= 86_400_000  # the keys go by themselves
    assert r0.hlen(OPEN_KEYS[0]) == 0 and not r0.exists(OPEN_KEYS[1]) and not r0.exists(OPEN_KEYS[2])


def _scans(r: Any) -> int:
    """Calls of the commands that read a whole hash or set (scripts' commands counted too)."""
    stats = r.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hkeys", "hgetall", "hvals", "zrange")
    )


async def test_the_subscription_cap_reads_one_count_not_every_subscription(
    two: Env, redis_server: RedisServer
) -> None:
    # Was: each subscription scanned every agent's subscriptions (HKEYS of the whole hash)
    # to count the subscriber's: O(all subscriptions) per operation, on the shared Redis.
    one, other = await _two(two, max_subscriptions=2)
    await other.register("agent-b", B.qualified)
    r: Any = redis.Redis.from_url(redis_server.url)
    for n in range(50):  # other agents' subscriptions
        await one.backend.subscribe(f"agent-x{n}", "news", 2**62)
    before = _scans(r)
    await one.subscribe(B, "t1")
    await other.subscribe(B, "t2")
    with pytest.raises(BusQuotaExceeded):
        await one.subscribe(B, "t3")
    assert _scans(r) == before
    # the count follows an unsubscription (a slot freed) and an agent that ends (all of them)
    await other.unsubscribe(B, "t1")
    await one.subscribe(B, "t3")
    assert r.zcard(PREFIX + "subs:of:agent-b") == 2 and r.zcard(PREFIX + "subs:of:agent-x7") == 1
    await one.backend.forget_agent("agent-b", ())
    assert not r.exists(PREFIX + "subs:of:agent-b") and not r.exists(PREFIX + "subs:made:agent-b")
    assert "agent-b" not in await one.backend.subscriptions()
    assert r.zcard(PREFIX + "subs:exp") == 50
