"""Topic subscriptions on Redis (``gateway.bus.redis_subs``), a real redis-server.

Attacks (red team 28, session 41's review): the expiry sweep read every subscription of every
agent (``HGETALL`` of one hash) every ``bus.expire_interval_s`` and a park read them all too
(``HKEYS``) at every parked session's end, each in one script: O(agents x 256) with Redis
blocked. A park on one gateway process removed what the same agent had just subscribed to
through another process sharing the Redis. The agents an earlier run left were cleared one
round trip each. What Redis runs is read with ``MONITOR`` (a script's commands included),
never timed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from gateway.bus.redis_backend import PREFIX
from gateway.context import Principal
from tests.bus.conftest import RedisServer
from tests.bus.test_core import A, B, Env
from tests.bus.test_redis_counts import _two, two  # noqa: F401 - two is the two processes' fixture

pytestmark = pytest.mark.anyio

EXP = PREFIX + "subs:exp"
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
    # was: HKEYS of every agent's subscriptions (one hash), at every parked session's end
    assert _keys(seen) == {EXP, PREFIX + "subs:of:agent-b", PREFIX + "subs:made:agent-b"}
    assert [c for c in seen if c.startswith(f"ZREM {EXP} ")] == [
        f"ZREM {EXP} agent-b\\x00news.*",
        f"ZREM {EXP} agent-b\\x00sports",
    ]
    assert "agent-b" not in await one.backend.subscriptions()
    assert len(await one.backend.subscriptions()) == 40


async def test_a_park_on_one_process_keeps_what_the_agent_subscribed_since_on_another(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: agent-b's session ends on process one (parked) and it is back at once on process
    # two; one's removal ran after two's subscription and took it: b, told it is subscribed,
    # got nothing. Now a park removes only what was made (or renewed) at or before the park.
    one, other = await _two(two)
    await other.register("agent-b", B.qualified)
    clock = [time.time()]
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: clock[0])
    await one.subscribe(B, "news.*")
    await other.subscribe(B, "old")  # made before the park, wherever: goes
    clock[0] += 1
    task = one.park("agent-b")
    assert task is not None
    task.cancel()  # the removal runs late, below: after b is back on the other process
    clock[0] += 0.001
    await other.register("agent-b", B.qualified)
    await other.subscribe(B, "news.*")  # renewed since the park: stays
    await other.subscribe(B, "sports")  # made since: stays
    await one._unsubscribe_parked("agent-b")  # what the park's task runs
    # was: every subscription of agent-b removed, "news.*" and "sports" included
    assert (await other.backend.subscriptions()).get("agent-b") == {"news.*", "sports"}
    assert (await one.publish(A, "news.x", "hello")).delivered_to == 1
    assert [r.body for r in await other.receive(B)] == ["hello"]


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
