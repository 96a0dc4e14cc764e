"""Hosted agents' leases on a real Redis (``gateway.state.leases``): one holder at a time, and
a process that does not hold the token -- a forger, or a holder whose lease already expired --
can neither extend nor release another's lease."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import anyio
import pytest
import redis

from gateway.state.leases import LEASE, LEASE_TTL_MS, START_TTL_MS, STATUS, WAKE, LeaseBoard
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio


@pytest.fixture
async def boards(redis_engine: Redis) -> AsyncIterator[tuple[LeaseBoard, LeaseBoard]]:
    redis.Redis.from_url(redis_engine.url).flushall()
    a = LeaseBoard(redis_engine.url, owner="replica-a", timeout_s=2)
    b = LeaseBoard(redis_engine.url, owner="replica-b", timeout_s=2)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


class _Raw:
    """Any Redis client's own commands on the lease keys (typed: redis-py's are loose)."""

    def __init__(self, engine: Redis) -> None:
        self.r = redis.Redis.from_url(engine.url, decode_responses=True)

    def get(self, key: str) -> str | None:
        return cast(str | None, self.r.get(key))

    def pttl(self, key: str) -> int:
        return cast(int, self.r.pttl(key))

    def pexpire(self, key: str, ms: int) -> None:
        self.r.pexpire(key, ms)

    def set(self, key: str, value: str, px: int) -> None:
        self.r.set(key, value, px=px)


def _raw(engine: Redis) -> _Raw:
    return _Raw(engine)


async def test_one_holder_at_a_time_and_the_status_names_it(boards: tuple[LeaseBoard, LeaseBoard]) -> None:
    a, b = boards
    la, lb = a.lease("clock"), b.lease("clock")
    assert await la.acquire({"state": "Running"})
    assert not await lb.acquire({"state": "Running"})  # NX: taken
    seen = await b.statuses(["clock", "other"])
    assert seen["other"] is None and seen["clock"] is not None
    assert (seen["clock"]["holder"], seen["clock"]["state"]) == ("replica-a", "Running")
    assert (await la.renew({"state": "Ready"})).held
    assert await la.release()
    assert (await b.statuses(["clock"]))["clock"] is None  # released with its status
    assert await lb.acquire({})


async def test_a_forged_token_neither_extends_nor_releases_the_lease(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({"state": "Running"})
    raw = _raw(redis_engine)
    raw.pexpire(LEASE + "clock", 2_000)  # so that an extension would show
    forged = b.lease("clock")
    forged.token = "00" * 16  # a token the forger made up
    assert not (await forged.renew({"state": "Running", "holder": "replica-b"})).held
    assert not await forged.release()
    assert raw.get(LEASE + "clock") == la.token  # still the holder's
    assert 0 < raw.pttl(LEASE + "clock") <= 2_000  # not extended
    assert '"replica-a"' in (raw.get(STATUS + "clock") or "")  # its status not rewritten either
    assert (await la.renew({"state": "Running"})).held
    assert raw.pttl(LEASE + "clock") > 2_000  # the holder's own renewal extends it


async def test_a_holder_whose_lease_expired_cannot_extend_or_release_the_next_ones(
    redis_engine: Redis,
) -> None:
    redis.Redis.from_url(redis_engine.url).flushall()
    a = LeaseBoard(redis_engine.url, owner="replica-a", timeout_s=2, ttl_ms=200)
    b = LeaseBoard(redis_engine.url, owner="replica-b", timeout_s=2)
    try:
        la, lb = a.lease("clock"), b.lease("clock")
        assert await la.acquire({})
        await anyio.sleep(0.4)  # a's lease expired (a paused, or cut off from Redis)
        assert await lb.acquire({})
        assert not (await la.renew({})).held  # compare-and-extend: not a's any more
        assert la.valid_until == 0.0  # and a knows it holds nothing
        assert not await la.release()  # compare-and-delete: b's lease stays
        raw = _raw(redis_engine)
        assert raw.get(LEASE + "clock") == lb.token
        assert raw.pttl(LEASE + "clock") > LEASE_TTL_MS - 5_000
    finally:
        await a.aclose()
        await b.aclose()


async def test_an_overwritten_lease_is_lost_to_its_holder(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    """Whoever writes the key itself (``SET`` without NX, from any Redis client) does not get
    the holder to renew it: the holder's next renewal says it is lost (then it stops its run,
    tests/runtime/test_leased.py)."""
    a, _ = boards
    la = a.lease("clock")
    assert await la.acquire({})
    _raw(redis_engine).set(LEASE + "clock", "forged", px=LEASE_TTL_MS)
    assert not (await la.renew({})).held
    assert _raw(redis_engine).get(LEASE + "clock") == "forged"  # the holder did not take it back


async def test_a_start_request_reaches_the_holder_at_its_next_renewal(
    boards: tuple[LeaseBoard, LeaseBoard],
) -> None:
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({})
    assert not (await la.renew({})).woken
    await b.wake("clock")  # `symbi agents run clock` answered by replica b
    assert (await la.renew({})).woken
    assert not (await la.renew({})).woken  # taken once


async def test_a_kept_withdrawal_deletes_only_starts_asked_before_it_whichever_reaches_redis_first(
    boards: tuple[LeaseBoard, LeaseBoard],
) -> None:
    """Through an outage replica b kept a start asked at ``t``, the holder a terminate asked
    after it (its withdrawal kept, at ``t + 1``); once Redis is back either comes first. The
    start was stamped when it reached Redis: written after the withdrawal it was not withdrawn
    (the terminated agent ran), and a withdrawal written after it spared it. Now it carries
    when it was asked and is dropped either way; a start asked after the terminate is kept."""
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({})
    t = await a.now() - 5.0
    assert await b.wake("clock", t)  # b's start first, then a's withdrawal
    assert await a.unwake("clock", t + 1)
    assert not (await la.renew({})).woken
    assert await a.unwake("clock", t + 1) is False  # a's withdrawal first, then b's start
    assert not await b.wake("clock", t)
    assert not (await la.renew({})).woken
    assert await b.wake("clock", t + 2)  # asked after the terminate: it runs
    assert (await la.renew({})).woken


async def test_a_withdrawal_without_a_time_is_now_and_drops_a_start_asked_before_it(
    boards: tuple[LeaseBoard, LeaseBoard],
) -> None:
    """A terminate answered by a replica that does not hold the lease withdrew with a bare DEL:
    a start asked before it, kept in another replica through an outage, came after it and ran."""
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({})
    asked = await a.now() - 5.0
    await b.unwake("clock")  # the terminate, answered now
    assert not await a.wake("clock", asked)  # the earlier start, late: dropped
    assert not (await la.renew({})).woken
    assert await a.wake("clock")  # a start asked now runs
    assert (await la.renew({})).woken


async def test_a_withdrawal_time_ahead_of_redis_is_kept_as_redis_now(
    boards: tuple[LeaseBoard, LeaseBoard],
) -> None:
    """A withdrawal's time is a replica's estimate (ahead by its round trip, or more with a
    clock stepped back): kept as given it dropped every start asked up to it, after their 202."""
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({})
    now = await a.now()
    await b.unwake("clock", now + 3600.0)
    assert await a.wake("clock", await a.now() + 1.0)  # asked after the terminate, really
    assert (await la.renew({})).woken


async def test_a_start_lives_while_a_replica_renews_it_and_expires_after(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    """A start had no expiry: one for an agent later removed from every config fired if the
    agent came back, months on. It lives ``START_TTL_MS`` now, renewed by each live replica
    whose config enables its agent (``watch``): a start of an agent none has expires."""
    a, b = boards
    raw = _raw(redis_engine)
    await b.wake("clock")
    await b.wake("removed")
    assert START_TTL_MS - 60_000 < raw.pttl(WAKE + "removed") <= START_TTL_MS
    raw.pexpire(WAKE + "clock", 1000)  # as if a day had gone by with no replica renewing them
    raw.pexpire(WAKE + "removed", 1000)
    look = await a.watch(["clock"], ["clock", "other"])  # a's config: clock (and one with no start)
    assert look.statuses == {"clock": None} and look.failed == []  # with the statuses
    assert look.now is not None and abs(look.now - await a.now()) < 5  # and Redis's clock
    assert raw.pttl(WAKE + "clock") > START_TTL_MS - 60_000
    assert raw.pttl(WAKE + "other") == -2  # none made
    await anyio.sleep(1.2)
    la = a.lease("removed")  # the agent back in a config: no start left to run
    assert await la.acquire({})
    assert not (await la.renew({})).woken
    lc = a.lease("clock")
    assert await lc.acquire({})
    assert (await lc.renew({})).woken


async def test_a_refused_start_renewal_loses_neither_the_statuses_nor_the_clock(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    """``watch`` is one non-transactional pipeline: it raised the first refusal after running
    all, so a user Redis's ACL denies ``PEXPIRE`` (a real refusal, ``NOPERM``) also lost the
    statuses and the clock every ``RENEW_S``. Each part's reply is its own now."""
    a, _ = boards
    assert await a.lease("clock").acquire({"state": "Running"})
    await a.wake("clock")
    admin = redis.Redis.from_url(redis_engine.url)
    admin.acl_setuser(
        "nopexpire", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-pexpire"]
    )
    limited = LeaseBoard(
        f"redis://nopexpire:pw@127.0.0.1:{redis_engine.port}/0", owner="replica-c", timeout_s=2
    )
    try:
        look = await limited.watch(["clock"], ["clock"])
        assert look.statuses is not None and look.statuses["clock"] is not None  # read all the same
        assert look.statuses["clock"]["state"] == "Running"
        assert look.now is not None and abs(look.now - await a.now()) < 5
        assert len(look.failed) == 1  # the refused renewal, said
    finally:
        await limited.aclose()
        admin.acl_deluser("nopexpire")
        admin.close()


async def test_a_status_that_no_gateway_wrote_is_that_agent_s_alone_and_known_as_nothing(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    """A status that is not a JSON object raised ``ValueError`` out of ``watch`` (not a Redis
    error: it ended the lease runner's task group, every hosted agent's supervision with it)
    and out of ``statuses`` (a credential check answered an error, not a refusal). It reads as
    a holder's status with nothing known (not Running, no key); the other agents' are read."""
    a, _ = boards
    assert await a.lease("clock").acquire({"state": "Running"})
    admin = redis.Redis.from_url(redis_engine.url)
    try:
        admin.set(STATUS + "garbled", b"\xffnot json")
        admin.set(STATUS + "listed", b"[1]")
        look = await a.watch(["garbled", "listed", "clock"], [])
        assert look.failed == [] and look.now is not None and look.statuses is not None
        assert look.statuses["garbled"] == {} and look.statuses["listed"] == {}
        clock = look.statuses["clock"]
        assert clock is not None and clock["state"] == "Running"
        assert await a.statuses(["garbled", "clock"]) == {"garbled": {}, "clock": clock}
    finally:
        admin.close()


async def test_a_renewal_says_when_the_start_it_took_was_asked(
    boards: tuple[LeaseBoard, LeaseBoard], redis_engine: Redis
) -> None:
    """The renewal said only that it took a start: a holder keeping a terminate's mark dropped
    it, one asked after the terminate too. It says the start's stamp now (Redis's clock), or
    0.0 for a start written with none (asked before any terminate, as ``unwake`` counts it)."""
    a, b = boards
    la = a.lease("clock")
    assert await la.acquire({})
    t = await a.now() - 5.0
    assert await b.wake("clock", t)  # kept through an outage: stamped when asked
    assert (await la.renew({})).asked == t
    before = await a.now()
    assert await b.wake("clock")  # stamped now, by Redis
    asked = (await la.renew({})).asked
    assert asked is not None and before <= asked <= await a.now()
    _raw(redis_engine).set(WAKE + "clock", "replica-b", px=60_000)  # no stamp
    assert (await la.renew({})).asked == 0.0
    assert (await la.renew({})).asked is None  # nothing taken
