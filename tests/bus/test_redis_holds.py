"""Which agents a gateway process holds live (``gateway.bus.redis_subs``: ``procs``,
``holds:<process>``), its heartbeat, and what a park and the start's clean-up remove around
them; a real redis-server, two or three ``Bus`` objects on it (two processes).

Session 42's second review (bus42c): a hold that lapsed in Redis was never sent again (the
heartbeat came back with none, and another process's park removed the subscriptions of this
one's live agents); one unexpected error or one hung call ended the heartbeat for good; a
park on this process removed the hold and the new subscriptions of an agent that came back
while it ran; a late conversion of the layout before brought back what was unsubscribed or
parked meanwhile, and its failure stopped the expiry sweep; the start's clean-up was never
tried again if Redis was down then, nor its re-check; they outlived the bus.

Session 42's third review (bus42d): a park whose script failed forgot the agent's generation,
so its retry left the hold for good; a resend cut short was never finished; a park between a
resend's reading of the holds and its batch reaching Redis was undone by it; the left-behind
agents were parked against the unconverted layout (a scan of the whole old hash per agent).
The failures and delays are injected by wrapping a script call (a faked seam: Redis itself is
real).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

import pytest
import redis

from gateway.bus import membership, redis_subs
from gateway.bus.core import Bus
from gateway.bus.redis_backend import PREFIX
from gateway.bus.redis_subs import HOLD_TTL_MS, LAYOUT
from gateway.context import Principal
from gateway.errors import BusUnavailable
from tests.bus.test_core import B, C, Env
from tests.bus.test_redis_counts import _two, two  # noqa: F401 - two is the two processes' fixture

pytestmark = pytest.mark.anyio


def _redis(env: Env) -> Any:
    assert env.url is not None
    return redis.Redis.from_url(env.url)


def _held(bus: Bus) -> str:
    return bus.backend.subs.held  # type: ignore[attr-defined, no-any-return]


async def test_a_hold_that_lapsed_in_redis_is_sent_again_by_the_next_beat(two: Env) -> None:  # noqa: F811
    # Attack: Redis unreachable for longer than HOLD_TTL_MS (or restarted without its data):
    # this process's holds expire, and its beat came back with none. agent-c, live here in a
    # session that never registers again, counted as held nowhere: another process's park of
    # the same id removed its subscriptions. Now the beat finds them gone and sends them again.
    one, other = await _two(two)
    await other.register("agent-c", C.qualified)
    await one.subscribe(C, "news")
    r = _redis(two)
    r.delete(_held(one))  # lapsed (as after HOLD_TTL_MS without a beat)
    await one.backend.subs.hold("")  # type: ignore[attr-defined] # the next beat
    # was: set() (the heartbeat alone)
    assert {k.decode() for k in r.hkeys(_held(one))} >= {"agent-a", "agent-b", "agent-c"}
    assert 0 < int(r.pttl(_held(one))) <= HOLD_TTL_MS
    task = other.park("agent-c")  # its session on the other process ends
    assert task is not None
    await task
    assert await one.backend.subscriptions_of("agent-c") == {"news"}


async def test_the_heartbeat_goes_on_after_an_error_and_a_hung_call(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: the heartbeat caught only BusError (any other error ended it, silently) and one
    # call that never returned blocked it for good: the process's agents counted as held
    # nowhere from then on. Now each beat is bounded by BEAT_S and whatever it raises, the next
    # one is tried.
    monkeypatch.setattr("gateway.bus.redis_backend.BEAT_S", 0.05)
    bus = await two.bus()
    backend: Any = bus.backend
    real = backend.subs.hold
    calls: list[int] = []

    async def hold(agent: str) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("unexpected")
        if len(calls) == 2:
            await asyncio.Event().wait()  # hangs
        await real(agent)

    monkeypatch.setattr(backend.subs, "hold", hold)
    task = asyncio.get_running_loop().create_task(backend._beating())
    try:
        for _ in range(200):
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.02)
        # was: one call, the task ended with the RuntimeError
        assert len(calls) >= 4 and not task.done()
    finally:
        task.cancel()


async def test_the_heartbeat_does_not_beat_again_right_after_the_start(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review (session 42): the start beats (its hold), then the heartbeat beat again at once.
    monkeypatch.setattr("gateway.bus.redis_backend.BEAT_S", 2.0)  # (well past a slow start)
    real = redis_subs.RedisSubscriptions.hold
    calls: list[str] = []

    async def hold(self: redis_subs.RedisSubscriptions, agent: str) -> None:
        calls.append(agent)
        await real(self, agent)

    monkeypatch.setattr(redis_subs.RedisSubscriptions, "hold", hold)
    await two.bus()
    for _ in range(5):  # the heartbeat task runs (it was created before the start's round trips)
        await asyncio.sleep(0)
    assert calls == [""]  # was: ["", ""]
    async with asyncio.timeout(10):  # and it beats, BEAT_S later
        while len(calls) < 2:
            await asyncio.sleep(0.02)


async def test_a_park_leaves_an_agent_back_here_meanwhile_its_hold_and_new_subscriptions(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: agent-b's session ends (a park) and it comes back at once on the same process:
    # registered (held), subscribed, and then the park's script reached Redis. It removed b's
    # hold and the subscription just made ("made before now", Redis's now). Now a hold has a
    # generation and the park passes the one it saw: a newer one means back, left alone.
    one, _ = await _two(two)
    backend: Any = one.backend
    entered, go = asyncio.Event(), asyncio.Event()
    script = backend.subs._park

    async def late(**kw: Any) -> Any:
        entered.set()
        await go.wait()  # the round trip lands late
        return await script(**kw)

    monkeypatch.setattr(backend.subs, "_park", late)
    task = one.park("agent-b")
    assert task is not None
    await entered.wait()
    await one.register("agent-b", B.qualified)  # back
    await one.subscribe(B, "news")
    go.set()
    await task
    # was: set() and no hold (removed by the park that began before b came back)
    assert await backend.subscriptions_of("agent-b") == {"news"}
    assert _redis(two).hexists(_held(one), "agent-b")


async def test_a_park_removes_an_agent_whose_older_hold_a_late_resend_wrote(two: Env) -> None:  # noqa: F811
    # The resend after a lapse read the holds before agent-b registered again and landed after
    # it: Redis holds b's older generation. Its park still removes (only a later one is "back").
    one, _ = await _two(two)
    await one.subscribe(B, "news")
    await one.register("agent-b", B.qualified)  # a newer generation here
    _redis(two).hset(_held(one), "agent-b", "1")  # the late resend's older one
    task = one.park("agent-b")
    assert task is not None
    await task
    assert await one.backend.subscriptions_of("agent-b") == set()
    assert not _redis(two).hexists(_held(one), "agent-b")


def _old_layout(env: Env, *entries: str) -> None:
    """The layout before: not converted yet (the marker unset), these live in it."""
    r = _redis(env)
    r.delete(PREFIX + "layout")
    until = int(time.time() * 1000) + 600_000
    r.hset(PREFIX + "subs", mapping={e.replace("/", "\0"): until for e in entries})


async def test_a_late_conversion_brings_back_nothing_unsubscribed_or_parked_meanwhile(two: Env) -> None:  # noqa: F811
    # Attack: Redis unreachable at start (or the conversion still running while calls are
    # served): agent-b unsubscribed and agent-c was parked before the old layout was converted,
    # and the conversion brought their old subscriptions back. Now, while the marker is unset,
    # an unsubscribe and a park remove them from the layout before too.
    one, _ = await _two(two)
    _old_layout(two, "agent-b/news", "agent-c/news", "agent-c/sports", "agent-a/news")
    assert await one.unsubscribe(B, "news")  # (it lives in the layout before only)
    task = one.park("agent-c")
    assert task is not None
    await task
    backend: Any = one.backend
    backend.subs.upgraded = False
    await one.expire()  # the sweep converts
    # was: agent-b and agent-c back with their old subscriptions
    assert await backend.subscriptions() == {"agent-a": {"news"}}


async def test_the_expiry_sweep_goes_on_when_the_conversion_fails(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: while the conversion failed (here: refused), every sweep failed before removing
    # what expired. Now the conversion has its own try: the expired ones still go.
    bus = await two.bus()
    backend: Any = bus.backend
    past = int(time.time() * 1000) - 1000
    await backend.subs.subscribe("agent-a", "old", past, past - 1, -1)

    async def refused(now_ms: int) -> int:
        raise BusUnavailable("down")

    backend.subs.upgraded = False
    monkeypatch.setattr(backend.subs, "upgrade", refused)
    await bus.expire()  # was: BusUnavailable
    assert _redis(two).zcard(PREFIX + "subs:exp") == 0


async def _left_by_a_crash(env: Env) -> tuple[Bus, Principal]:
    """agent-q subscribed on a process that crashed, its holds lapsed: left behind."""
    crashed = await env.bus()
    q = Principal(id="team", agent="agent-q", source="key")
    await crashed.register("agent-q", q.qualified)
    await crashed.subscribe(q, "news")
    backend: Any = crashed.backend
    backend._beat.cancel()
    await backend.subs.release_all()
    return crashed, q


async def test_the_start_clears_what_an_earlier_run_left_once_redis_is_back(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: Redis unreachable at start: the left-behind agents were parked here but their
    # subscriptions were never removed (the clean-up was not tried again). Now the expiry
    # sweep tries again until it worked.
    await _left_by_a_crash(two)
    after = await two.bus()
    backend: Any = after.backend
    real = backend.unsubscribe_parked

    async def down(agents: list[str]) -> list[str]:
        raise BusUnavailable("down")

    monkeypatch.setattr(backend, "unsubscribe_parked", down)
    await after.forget_left_behind()
    assert await backend.subscriptions_of("agent-q") == {"news"}
    monkeypatch.setattr(backend, "unsubscribe_parked", real)
    await after.expire()
    # was: {"news"} (until bus.subscription_ttl_s)
    assert await backend.subscriptions_of("agent-q") == set()


async def test_the_recheck_is_tried_again_and_stops_with_the_bus(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: the start's re-check of the left-behind agents gave up at its first error, and
    # it (with the parks under way) outlived the bus's close, running on a closed backend.
    assert membership.RECHECK_LEFT_S > HOLD_TTL_MS / 1000  # (derived from it)
    monkeypatch.setattr("gateway.bus.membership.BEAT_S", 0.01)
    await _left_by_a_crash(two)
    after = await two.bus()
    backend: Any = after.backend
    real = backend.unsubscribe_parked
    calls: list[int] = []

    async def once_down(agents: list[str]) -> list[str]:
        calls.append(1)
        if len(calls) == 1:
            raise BusUnavailable("down")
        return await real(agents)  # type: ignore[no-any-return]

    after.ring.park_unended(int(time.time() * 1000))
    monkeypatch.setattr(backend, "unsubscribe_parked", once_down)
    await after.recheck_left(["agent-q"])
    # was: {"news"} (one error and the re-check gave up)
    assert await backend.subscriptions_of("agent-q") == set()
    after._recheck(["agent-q"])  # waits RECHECK_LEFT_S
    await after.stop_tasks()
    assert not after._tasks


async def test_a_park_that_failed_in_redis_removes_the_hold_when_tried_again(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: the park took agent-b's generation out of memory before its round trip; the script
    # failed (a Redis blip), so Redis kept b's hold and the retry passed none: the stored one
    # counted as "back here", the hold stayed for good (renewed by every beat) and every other
    # process's park of agent-b kept its subscriptions. Now b leaves memory only once parked.
    one, _ = await _two(two)
    backend: Any = one.backend
    script = backend.subs._park

    def blip(**kw: Any) -> Any:
        raise BusUnavailable("blip")  # (the faked seam: the script's call fails)

    monkeypatch.setattr(backend.subs, "_park", blip)
    with pytest.raises(BusUnavailable):
        await backend.unsubscribe_parked(["agent-b"])
    monkeypatch.setattr(backend.subs, "_park", script)
    assert await backend.unsubscribe_parked(["agent-b"]) == []
    await backend.subs.hold("")  # the next beat
    # was: agent-b still held here (the retry saw no generation: "back here")
    assert not _redis(two).hexists(_held(one), "agent-b")
    assert "agent-b" not in backend.subs.mine


async def test_a_resend_cut_short_is_finished_by_the_next_beat(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: after a lapse the beat sends every hold again, HOLD_BATCH per script; a later
    # batch failed (or the beat's BEAT_S bound cut it short) after the first had made the key
    # exist again: later beats found it and never sent the rest. Now the resend stays pending
    # until it has all gone through.
    monkeypatch.setattr(redis_subs, "HOLD_BATCH", 1)
    one, _ = await _two(two)
    backend: Any = one.backend
    r = _redis(two)
    r.delete(_held(one))  # lapsed
    script = backend.subs._hold
    calls: list[int] = []

    def flaky(**kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:  # the beat's own call, the first batch, then this one fails
            raise BusUnavailable("blip")
        return script(**kw)

    monkeypatch.setattr(backend.subs, "_hold", flaky)
    with pytest.raises(BusUnavailable):
        await backend.subs.hold("")
    monkeypatch.setattr(backend.subs, "_hold", script)
    await backend.subs.hold("")  # the next beat
    # was: only the first batch's agent (the key existed: no resend)
    assert {k.decode() for k in r.hkeys(_held(one))} == {"agent-a", "agent-b", "agent-c"}


class NotedLock(asyncio.Lock):
    """A lock that notes the first time it is asked for while held."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.asked.set()
        return await super().acquire()


async def test_a_park_during_a_resend_is_not_undone_by_it(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: a resend read the holds, then agent-b was parked before the resend's batch
    # reached Redis: the batch wrote b's hold back, held here for good. Now a resend and a park
    # take turns on a process.
    one, _ = await _two(two)
    backend: Any = one.backend
    _redis(two).delete(_held(one))  # lapsed
    script = backend.subs._hold
    entered, go = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def late(aw: Any) -> Any:
        entered.set()
        await go.wait()  # the batch's round trip lands late
        return await aw

    def slow(**kw: Any) -> Any:
        calls.append(1)
        return script(**kw) if len(calls) == 1 else late(script(**kw))

    monkeypatch.setattr(backend.subs, "_hold", slow)
    turn = backend.subs._turn = NotedLock()
    beat = asyncio.get_running_loop().create_task(backend.subs.hold(""))
    await entered.wait()  # the resend read agent-b's hold
    park = asyncio.get_running_loop().create_task(backend.unsubscribe_parked(["agent-b"]))
    # the park waits its turn (or, without turns, has run: was a 50 ms sleep, a race)
    asked = asyncio.ensure_future(turn.asked.wait())
    await asyncio.wait({park, asked}, return_when=asyncio.FIRST_COMPLETED)
    asked.cancel()  # (not left pending past the test)
    go.set()
    await beat
    assert await park == []
    # was: agent-b held here again (by the batch that landed after its park)
    assert not _redis(two).hexists(_held(one), "agent-b")
    assert "agent-b" not in backend.subs.mine


async def test_the_sweep_converts_the_layout_before_it_parks_the_left_behind_agents(
    two: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Attack: Redis unreachable at start: the sweep parked the left-behind agents before it
    # converted the layout before, so each park script scanned the whole old hash per agent
    # (100,000 entries: 3.8 s of Redis blocked per script). Now the conversion comes first.
    await _left_by_a_crash(two)
    after = await two.bus()
    backend: Any = after.backend
    _old_layout(two, "agent-q/old", "agent-a/news")
    backend.subs.upgraded = False
    after._left = after.ring.park_unended(int(time.time() * 1000))  # (the start's clean-up failed)
    assert after._left == ["agent-q"]
    markers: list[Any] = []
    script = backend.subs._park

    def seen(**kw: Any) -> Any:
        markers.append(_redis(two).get(PREFIX + "layout"))
        return script(**kw)

    monkeypatch.setattr(backend.subs, "_park", seen)
    await after.expire()
    # was: [None] (parked against the unconverted layout)
    assert markers == [LAYOUT.encode()]
    assert await backend.subscriptions_of("agent-q") == set()
    assert await backend.subscriptions_of("agent-a") == {"news"}


async def test_a_resend_never_writes_an_older_generation_over_a_later_one(two: Env) -> None:  # noqa: F811
    # A resend read agent-b's hold before b registered again here and landed after it: it
    # wrote b's older generation over the newer one (a park begun meanwhile then removed b).
    one, _ = await _two(two)
    backend: Any = one.backend
    r = _redis(two)
    r.hset(_held(one), "agent-b", "1000000")  # b's newer hold, stored before the resend lands
    await backend.subs._hold_all()
    # was: b"2" or so (the resend's older generation)
    assert r.hget(_held(one), "agent-b") == b"1000000"
