"""Topic subscriptions on Redis (``gateway.bus.redis_subs``), a real redis-server.

Attacks (red team 28, session 41's review): the expiry sweep read every subscription of every
agent (``HGETALL`` of one hash) every ``bus.expire_interval_s`` and a park read them all too
(``HKEYS``) at every parked session's end, each in one script: O(agents x 256) with Redis
blocked. A park on one gateway process removed what the same agent had just subscribed to
through another process sharing the Redis. The agents an earlier run left were cleared one
round trip each. What Redis runs is read with ``MONITOR`` (a script's commands included),
never timed.

Session 42's review: a park compared the subscribing process's clock with the parking one's;
it removed the subscriptions of an agent live on another process at the same time (a
stateless client's agent id, on two replicas), at a park as at the start's clean-up; the
upgrade deleted the old layout's live subscriptions; one malformed ``subs:exp`` member
stopped the expiry sweep for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from gateway.bus.core import Bus
from gateway.bus.redis_backend import PREFIX
from gateway.context import Principal
from tests.bus.conftest import RedisServer
from tests.bus.test_core import A, B, C, Env
from tests.bus.test_redis_counts import _two, two  # noqa: F401 - two is the two processes' fixture

pytestmark = pytest.mark.anyio

EXP = PREFIX + "subs:exp"
PROCS = PREFIX + "procs"
END = "bus42-monitor-end"


@contextlib.contextmanager
def monitored(url: str) -> Iterator[list[str]]:
    """The commands Redis runs inside the block (a script's own ones included), read once it ends."""
    seen: list[str] = []
    r: Any = redis.Redis.from_url(url)
    with r.monitor() as m:
        yield seen
        redis.Redis.from_url(url).echo(END)
        for c in m.listen():
            if c["command"] == f"ECHO {END}":
                break
            seen.append(c["command"])


def _keys(commands: list[str]) -> set[str]:
    """The keys the commands run by scripts and clients name (their first argument)."""
    return {c.split(" ")[1] for c in commands if " " in c and not c.startswith(("EVAL", "ECHO", "SCRIPT"))}


@pytest.fixture
async def crowded(two: Env) -> AsyncIterator[Env]:  # noqa: F811
    """40 other agents with 10 live subscriptions each, on the same Redis."""
    one, _ = await _two(two)
    for n in range(40):
        for t in range(10):
            await one.subscribe(_agent(f"agent-x{n}"), f"t{t}")
    yield two


def _agent(agent: str) -> Principal:
    return Principal(id="team", agent=agent, source="key")


async def test_the_expiry_sweep_takes_a_batch_per_script_and_only_what_expired(
    crowded: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = crowded.buses[0]
    now = time.time()
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: now - 86_400 - 1)  # a day and a second ago
    for n in range(27):  # expired now, not swept yet
        await one.subscribe(_agent(f"agent-old{n % 3}"), f"p{n}")
    monkeypatch.undo()
    monkeypatch.setattr("gateway.bus.redis_subs.SWEEP_BATCH", 10)
    assert crowded.url is not None
    with monitored(crowded.url) as seen:
        await one.expire()
    reads = [c for c in seen if c.startswith("ZRANGEBYSCORE")]
    # was: one script reading the whole hash (HGETALL, 427 fields) every sweep
    assert not [c for c in seen if c.split(" ")[0] in ("HGETALL", "HKEYS", "HVALS", "ZRANGE", "ZSCAN")]
    assert len(reads) == 3  # one a script: 27 expired, 10, 10 and 7
    assert all(c.startswith(f"ZRANGEBYSCORE {EXP} -inf ") and c.endswith(" LIMIT 0 10") for c in reads)
    assert len([c for c in seen if c.startswith(f"ZREM {EXP} ")]) == 27
    # none of the live agents' own keys is touched
    assert not [k for k in _keys(seen) if "agent-x" in k]
    r: Any = redis.Redis.from_url(crowded.url)
    assert r.zcard(EXP) == 400 and not r.keys(PREFIX + "subs:*agent-old*")
    assert len(await one.backend.subscriptions()) == 40


async def test_a_park_reads_only_the_parked_agents_keys(crowded: Env) -> None:
    one = crowded.buses[0]
    await one.subscribe(B, "news.*")
    await one.subscribe(B, "sports")
    assert crowded.url is not None
    with monitored(crowded.url) as seen:
        task = one.park("agent-b")
        assert task is not None
        await task
    # was: HKEYS of every agent's subscriptions (one hash), at every parked session's end;
    # (and the live processes: whether the other one holds agent-b)
    held = {b.backend.subs.held for b in crowded.buses}  # type: ignore[attr-defined]
    assert _keys(seen) == {
        EXP,
        PREFIX + "subs:of:agent-b",  # (and subs:made:agent-b, deleted with it: no longer read)
        PROCS,
        *held,
        PREFIX + "layout",
    }
    assert [c for c in seen if c.startswith(f"ZREM {EXP} ")] == [
        f"ZREM {EXP} agent-b\\x00news.*",
        f"ZREM {EXP} agent-b\\x00sports",
    ]
    assert "agent-b" not in await one.backend.subscriptions()
    assert len(await one.backend.subscriptions()) == 40


async def test_a_park_leaves_an_agent_live_on_another_process_its_subscriptions(two: Env) -> None:  # noqa: F811
    # Attack: agent-c (a stateless client's id: its credential and client name) is live on
    # both processes behind a round-robin balancer. Process two subscribes it; its idle session
    # on process one ends a moment later: one's park removed what two had just made, and the
    # client, told it is subscribed, received nothing. Now a process holds its live agents in
    # Redis (``held:<process>``, with a heartbeat) and a park leaves one held elsewhere alone.
    one, other = await _two(two)
    await other.register("agent-c", C.qualified)
    await other.subscribe(C, "news.*")
    await _parked(one, "agent-c")
    # was: {} (removed by the park on one)
    assert (await other.backend.subscriptions()).get("agent-c") == {"news.*"}
    assert (await one.publish(A, "news.x", "hello")).delivered_to == 1
    assert [r.body for r in await other.receive(C)] == ["hello"]
    await _parked(other, "agent-c")  # its session there ends too: held nowhere, they go
    assert "agent-c" not in await one.backend.subscriptions()


async def _parked(bus: Bus, agent: str) -> None:
    task = bus.park(agent)
    assert task is not None
    await task


class _Ahead:
    """The ``time`` module of a process whose clock is ``by`` seconds ahead."""

    def __init__(self, by: float) -> None:
        self.by = by

    def time(self) -> float:
        return time.time() + self.by

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_a_subscribing_process_whose_clock_is_ahead_keeps_nothing_past_a_park(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: the park compared the subscription's made time, the subscribing process's clock,
    # with the park time, the parking process's: with the subscriber's clock 50 ms ahead, a
    # subscription made before the park survived it (the parked agent kept its fan-out). Now
    # both are Redis's clock (TIME, in the subscribe and the park scripts).
    one, other = await _two(two)
    await other.register("agent-b", B.qualified)  # b live on both processes
    monkeypatch.setattr("gateway.bus.core.time", _Ahead(0.05))  # where a subscription is made
    await other.subscribe(B, "news.*")
    await _parked(other, "agent-b")  # kept: b is still live on one
    assert (await one.backend.subscriptions()).get("agent-b") == {"news.*"}
    await _parked(one, "agent-b")  # b is held nowhere now: what it made before goes
    # was: {"agent-b": {"news.*"}} (made "after" both parks, by the subscriber's clock)
    assert await one.backend.subscriptions() == {}
    assert (await one.publish(A, "news.x", "hello")).delivered_to == 0


async def test_the_start_leaves_an_agent_live_on_another_process_its_subscriptions(two: Env) -> None:  # noqa: F811
    # Attack: at start, the agents whose id recurs that an earlier run left unended lost their
    # subscriptions, though live on another process of the fleet at that moment. Those held by
    # the run that crashed (its heartbeat not lapsed yet) are looked at again later.
    live = await two.bus()
    crashed = await two.bus()
    r_live = Principal(id="team", agent="agent-r", source="key")
    r_gone = Principal(id="team", agent="agent-q", source="key")
    for bus, p in ((live, r_live), (crashed, r_gone)):
        assert p.agent is not None
        await bus.register(p.agent, p.qualified)
        await bus.subscribe(p, "news")
    crashed_backend: Any = crashed.backend
    crashed_backend._beat.cancel()  # it crashed: no heartbeat, nothing released
    after = await two.bus()
    assert two.url is not None
    r: Any = redis.Redis.from_url(two.url)
    await after.forget_left_behind()  # both were stored unended in the data dir's keys
    # was: {} (agent-r removed though live elsewhere)
    assert await after.backend.subscriptions() == {"agent-r": {"news"}, "agent-q": {"news"}}
    r.zadd(PROCS, {crashed_backend.subs.me: 1})  # its beat lapsed
    await after.recheck_left(["agent-r", "agent-q"])  # (what RECHECK_LEFT_S later runs)
    assert await after.backend.subscriptions() == {"agent-r": {"news"}}


async def test_a_malformed_expiry_entry_does_not_stop_the_sweep(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: one subs:exp member without its separator made the sweep script raise (nil
    # arithmetic) on every later sweep: expiry stopped for good. Now it is removed, and on.
    one, _ = await _two(two)
    assert two.url is not None
    r: Any = redis.Redis.from_url(two.url)
    r.zadd(EXP, {"no-separator": 1})
    monkeypatch.setattr("gateway.bus.core.time", _Ahead(-86_400 - 1))  # made and expired a day ago
    await one.subscribe(B, "old")
    monkeypatch.undo()
    await one.expire()  # was: BusError (the script failed), every time
    await one.expire()
    assert r.zcard(EXP) == 0 and not r.exists(PREFIX + "subs:of:agent-b")


async def test_the_old_layout_is_converted_once_in_bounded_batches(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the session-41 layout (``subs``: agent\0pattern -> expiry) converted at the first start,
    # an HSCAN batch per script, never in one script; later starts convert nothing (the marker)
    assert two.url is not None
    r: Any = redis.Redis.from_url(two.url)
    far = int(time.time() * 1000) + 3_600_000
    r.hset(PREFIX + "subs", mapping={f"agent-u{n % 6}\0t{n}": str(far) for n in range(600)})
    monkeypatch.setattr("gateway.bus.redis_subs.UPGRADE_BATCH", 100, raising=False)
    with monitored(two.url) as seen:
        first = await two.bus()
    scans = [c for c in seen if c.startswith("HSCAN")]
    assert len(scans) >= 4 and all(c.endswith(" COUNT 100") for c in scans)
    live = await first.backend.subscriptions()
    assert sorted(live) == [f"agent-u{n}" for n in range(6)] and sum(map(len, live.values())) == 600
    r.hset(PREFIX + "subs", "agent-u0\0late", str(far))  # (a previous version still running: unsupported)
    with monitored(two.url) as seen:
        await two.bus()
    assert not [c for c in seen if c.startswith("HSCAN")]
    assert r.zcard(EXP) == 600


async def test_the_agents_an_earlier_run_left_are_cleared_a_batch_per_round_trip(
    two: Env,  # noqa: F811
    redis_server: RedisServer,
) -> None:
    # Was: one script (one round trip) per agent left behind; a run may leave thousands.
    before = await two.bus()
    for n in range(150):  # agents whose id recurs, never ended (the run crashed)
        await before.register(f"agent-r{n}", A.qualified)
        await before.subscribe(_agent(f"agent-r{n}"), "news")
    await two.close()
    r: Any = redis.Redis.from_url(redis_server.url)
    assert r.zcard(EXP) == 150
    after = await two.bus()

    def scripts() -> int:
        stats = r.info("commandstats")
        ran = [stats.get(f"cmdstat_{c}", {}) for c in ("eval", "evalsha")]  # (a NOSCRIPT: not run)
        return sum(
            int(s.get("calls", 0)) - int(s.get("failed_calls", 0)) - int(s.get("rejected_calls", 0))
            for s in ran
        )

    ran = scripts()
    await after.forget_left_behind()
    assert scripts() - ran == 2  # 100 agents a script (was 150)
    assert r.zcard(EXP) == 0 and await after.backend.subscriptions() == {}


async def test_a_park_kept_for_another_process_is_done_once_it_lets_go(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review (session 42): a park on this process left alone an agent another process held
    # live, and never looked again: when that process crashed (its heartbeat lapsed, no park
    # of its own), the agent's subscriptions filled its inbox until they expired. Now the
    # park looks again (as the start's clean-up does) until none holds it.
    monkeypatch.setattr("gateway.bus.membership.RECHECK_LEFT_S", 0.05)
    one, other = await _two(two)
    await other.register("agent-c", C.qualified)  # live on both
    await one.subscribe(C, "news.*")
    rechecks: list[list[str]] = []
    real = one.backend.unsubscribe_parked

    async def counted(agents: list[str]) -> list[str]:
        rechecks.append(agents)
        return await real(agents)

    monkeypatch.setattr(one.backend, "unsubscribe_parked", counted)
    await _parked(one, "agent-c")
    assert (await one.backend.subscriptions()).get("agent-c") == {"news.*"}  # kept: live on other
    async with asyncio.timeout(5):  # looked at again, twice, while other still holds it
        while len(rechecks) < 3:
            await asyncio.sleep(0.02)
    assert (await one.backend.subscriptions()).get("agent-c") == {"news.*"}  # still kept
    backend: Any = other.backend
    backend._beat.cancel()  # other crashes: its holds go with its heartbeat
    await backend.subs.release_all()
    async with asyncio.timeout(5):
        while "agent-c" in await one.backend.subscriptions():
            await asyncio.sleep(0.02)
    # was: {"news.*"} until bus.subscription_ttl_s
