"""Replies, topics and the send tool's fields, against both backends (embedded SQLite and a
real redis-server), in-process.

Found by mutation testing (group "bus", scripts/mutate.py): nothing checked the audit record of
a publish (its fields, its chain link, who published), that a publish reaches only matching
subscribers when the publisher subscribes too, who a refused topic delivery is charged to, how
long a reply lives, what the policy is asked about a reply, a reply that comes after its
requester gave up (bus.reply_late), or two requests waiting on one agent's reply inbox (one
pumps it, the other takes over when the first is answered) and on two agents' inboxes at once.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from gateway.bus.builtin import BusBuiltin
from gateway.context import Decision, Principal
from gateway.errors import BusBufferFull, BusError
from gateway.events import Event
from tests.bus.test_core import A, B, C, Env, _pair, env  # noqa: F401 - env is the backends' fixture
from tests.bus.test_tools_and_stats import _recorded

pytestmark = pytest.mark.anyio

GUARD_S = 60  # a hang fails the test instead of stalling the suite (not a timing assertion)


async def test_the_send_tool_takes_its_ttl_and_answers_recipient_and_expiry(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    before = int(time.time() * 1000)
    sent = await BusBuiltin(bus)._send(A, {"to": "agent-b", "body": "x", "ttl_s": 5})
    after = int(time.time() * 1000)
    assert set(sent) == {"id", "to", "expires_ms"} and sent["to"] == "agent-b"
    # expires 5 s after it was sealed (not bus.max_age_s, a day by default)
    assert before + 5000 <= sent["expires_ms"] <= after + 5000
    (got,) = await bus.receive(B)
    assert got.id == sent["id"] and got.expires_ms == sent["expires_ms"]


async def test_a_publish_is_audited_with_its_fields_chain_and_publisher(env: Env) -> None:  # noqa: F811
    seen = _recorded(env)
    bus = await _pair(env)
    await bus.subscribe(B, "news.*")
    await bus.subscribe(A, "news.*")  # the publisher's own subscription does not deliver to it
    await bus.subscribe(C, "other.*")  # nor does a subscription that does not match
    first = await bus.publish(A, "news.x", {"n": 1})
    second = await bus.publish(A, "news.x", {"n": 2})
    assert (first.delivered_to, first.refused) == (1, ())
    assert [r.body for r in await bus.receive(B, max_items=10)] == [{"n": 1}, {"n": 2}]
    assert await bus.receive(A) == [] and await bus.receive(C) == []
    published = [(d, p) for t, d, p in seen if t == Event.BUS_PUBLISH]
    assert [p for _, p in published] == [A.id, A.id]
    d1, d2 = (d for d, _ in published)
    for d, pub in ((d1, first), (d2, second)):
        assert isinstance(d["timestamp_ms"], int) and isinstance(d["expires_ms"], int) and d["size"] > 0
        assert {k: d[k] for k in ("id", "sender", "recipient", "topic", "kind", "reply_to")} == {
            "id": pub.id,
            "sender": "agent-a",
            "recipient": None,
            "topic": "news.x",
            "kind": "topic",
            "reply_to": None,
        }
        assert (d["subscribers"], d["refused"]) == (1, [])
    # the publisher's chain on the topic: the second message links the first
    assert (d1["prev"], d2["prev"]) == (None, first.id)


async def test_a_subscriber_with_a_full_buffer_is_refused_and_named_to_the_publisher(env: Env) -> None:  # noqa: F811
    seen = _recorded(env)
    bus = await _pair(env, buffer_size=1)
    await bus.subscribe(B, "news.*")
    await bus.subscribe(C, "news.*")
    await bus.send(A, "agent-b", "fills b's buffer")
    res = await bus.publish(A, "news.x", 1)
    assert (res.delivered_to, res.refused) == (1, ("agent-b",))
    failed = [(d, p) for t, d, p in seen if t == Event.BUS_DELIVERY_FAILED]
    assert [(d["inbox"], d["error_code"], p) for d, p in failed] == [("agent-b", BusBufferFull.code, A.id)]
    (published,) = [d for t, d, _ in seen if t == Event.BUS_PUBLISH]
    assert (published["subscribers"], published["refused"]) == (2, ["agent-b"])


async def test_a_reply_lives_as_long_as_its_request_and_is_decided_and_audited(env: Env) -> None:  # noqa: F811
    seen = _recorded(env)
    asked: list[tuple[str, str, Any]] = []

    async def authorize(kind: str, principal: Principal, recipient: Any, topic: Any) -> Decision:
        asked.append((kind, principal.id, recipient))
        return Decision(True, (), {})

    bus = await _pair(env, authorize=authorize)
    replies: list[Any] = []

    async def responder() -> None:
        (req,) = await bus.receive(B, wait_s=GUARD_S)
        replies.append((req, await bus.reply(B, req.id, "a")))

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder)
            answer = await bus.request(A, "agent-b", "q", timeout_s=30)
    ((req, msg),) = replies
    assert answer.body == "a" and answer.reply_to == req.id
    # the reply expires when its request does (not bus.max_age_s, a day): never answered too late
    assert req.expires_ms <= msg.expires_ms < req.expires_ms + 60_000
    assert asked == [
        ("bus/send", A.id, {"agent": "agent-b", "principal": B.qualified}),
        ("bus/send", B.id, {"agent": "agent-a", "principal": A.qualified}),
    ]
    sends = [(d["kind"], d["recipient"], p) for t, d, p in seen if t == Event.BUS_SEND]
    assert sends == [("request", "agent-b", A.id), ("reply", "agent-a", B.id)]
    with pytest.raises(BusError):  # answered: no longer open
        await bus.reply(B, req.id, "again")
    with pytest.raises(BusError):
        await bus.reply(B, "no-such-request", "x")


async def test_a_reply_after_its_requester_gave_up_is_audited_as_late(env: Env) -> None:  # noqa: F811
    seen = _recorded(env)
    bus = await _pair(env)
    with anyio.move_on_after(0.3):  # the caller gives up (its call cancelled), the request stays live
        await bus.request(A, "agent-b", "first", timeout_s=30)
    with anyio.fail_after(GUARD_S):
        (first,) = await bus.receive(B, wait_s=GUARD_S)
    late = await bus.reply(B, first.id, "too late")

    async def responder() -> None:
        (second,) = await bus.receive(B, wait_s=GUARD_S)
        await bus.reply(B, second.id, "in time")

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder)
            answer = await bus.request(A, "agent-b", "second", timeout_s=30)
    assert answer.body == "in time"
    late_events = [(d, p) for t, d, p in seen if t == Event.BUS_REPLY_LATE]
    assert late_events == [({"id": late.id, "reply_to": first.id, "sender": "agent-b"}, A.id)]


async def test_two_requests_of_one_agent_both_get_their_replies(env: Env) -> None:  # noqa: F811
    """The first waiter pumps the agent's reply inbox; answered first, it stops, and the
    second waiter (polling its future meanwhile) must take the pump over."""
    bus = await _pair(env)
    answers: dict[str, Any] = {}

    async def ask(body: str) -> None:
        answers[body] = (await bus.request(A, "agent-b", body, timeout_s=30)).body

    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "fast")
            await anyio.sleep(0.2)  # "fast" waits first: it holds the pump
            tg.start_soon(ask, "slow")
            got: list[Any] = []
            while len(got) < 2:
                got += await bus.receive(B, max_items=10, wait_s=1)
            by_body = {r.body: r for r in got}
            await bus.reply(B, by_body["fast"].id, "fast answered")
            await anyio.sleep(0.3)  # the pump's holder has its answer and lets go
            await bus.reply(B, by_body["slow"].id, "slow answered")
    assert answers == {"fast": "fast answered", "slow": "slow answered"}


async def test_an_unanswered_request_does_not_hold_up_another_agents_reply(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    with anyio.fail_after(GUARD_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: bus.request(A, "agent-b", "never answered", timeout_s=GUARD_S))
            await anyio.sleep(0.2)  # A's waiter pumps A's reply inbox

            async def responder() -> None:
                while True:
                    for r in await bus.receive(B, max_items=10, wait_s=1):
                        if r.sender == "agent-c":
                            await bus.reply(B, r.id, "for c")
                            return

            tg.start_soon(responder)
            # well inside A's wait: C's reply is pumped from C's inbox, not behind A's
            answer = await bus.request(C, "agent-b", "answered", timeout_s=10)
            tg.cancel_scope.cancel()
    assert answer.body == "for c"


async def test_publications_leave_half_the_inbox_to_direct_messages(env: Env) -> None:  # noqa: F811
    # Attack: a publisher of a topic the victim follows filled the victim's one inbox, and the
    # victim's own peers then got bus_buffer_full on every send and request.
    bus = await _pair(env, buffer_size=4)
    await bus.subscribe(B, "news.*")
    results = [await bus.publish(A, "news.x", n) for n in range(4)]
    assert [r.refused for r in results] == [(), (), ("agent-b",), ("agent-b",)]  # two of four
    for n in range(2):
        await bus.send(C, "agent-b", f"direct {n}")  # room kept for these
    with pytest.raises(BusBufferFull):
        await bus.send(C, "agent-b", "over")  # the whole buffer still bounds the inbox
    got = await bus.receive(B, max_items=10)
    assert [r.body for r in got] == [0, 1, "direct 0", "direct 1"]


async def test_another_agents_flood_of_requests_never_closes_a_request_this_one_holds(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attack (session 36): the requests an agent received and may answer were kept in one
    list for the whole gateway, oldest out past MAX_OPEN_REQUESTS. A principal that sent its
    own second agent that many requests (and had it receive them) closed every other
    principal's open requests: their replies were refused ("no open request"). The cap is
    made small here; the path is the same at 10,000."""
    monkeypatch.setattr("gateway.bus.core.MAX_OPEN_REQUESTS", 20)
    m1 = Principal(id="mallory", agent="agent-m1", source="key")
    m2 = Principal(id="mallory", agent="agent-m2", source="key")
    bus = await _pair(env)
    for p in (m1, m2):
        assert p.agent is not None
        await bus.register(p.agent, p.qualified)
    with anyio.move_on_after(0.3):  # C's request stays live after C stops waiting
        await bus.request(C, "agent-b", "please answer", timeout_s=30)
    with anyio.fail_after(GUARD_S):
        (held,) = await bus.receive(B, wait_s=GUARD_S)
    for n in range(25):
        with anyio.move_on_after(0.2):  # mallory's first agent stops waiting: the request lives on
            await bus.request(m1, "agent-m2", n, timeout_s=30)
    got = 0
    with anyio.fail_after(GUARD_S):
        while batch := await bus.receive(m2, max_items=100, wait_s=1):
            got += len(batch)
    assert got > 20  # more than the cap: every open request of the gateway would have gone
    msg = await bus.reply(B, held.id, "answered")  # still open: B's own, never mallory's to close
    assert msg.reply_to == held.id
    with pytest.raises(BusError):  # mallory's flood closes only its own oldest
        await bus.reply(m2, "no-such-request", "x")


async def test_a_publish_reads_its_subscribers_entries_in_one_round_trip(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publish charged each copy to its subscriber's principal after reading that
    subscriber's directory entry on its own: one Redis round trip per subscriber (when not yet
    cached: a new process, a subscriber registered again). They are read at once now; and the
    publisher's charge (counted in Redis) comes with the subscriptions' read: a publication
    to S subscribers is S + 1 round trips (bench/bus_round_trips.py)."""
    if env.kind != "redis":
        pytest.skip("round trips to Redis")
    import redis
    import redis.asyncio.connection as rconn

    assert env.url is not None
    subscribers = await env.bus()
    for n in range(5):
        await subscribers.subscribe(Principal(id="team", agent=f"agent-s{n}", source="key"), "news")
    publisher = await env.bus()  # another process: nothing cached
    await publisher.register("agent-a", A.qualified)
    r: Any = redis.Redis.from_url(env.url)
    r.config_resetstat()
    assert (await publisher.publish(A, "news", "hello")).delivered_to == 5
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    assert calls.get("hget", 0) == 0 and calls.get("hmget") == 1
    got = await subscribers.receive(Principal(id="team", agent="agent-s3", source="key"))
    assert [m.body for m in got] == ["hello"]
    writes = [0]
    send = rconn.AbstractConnection.send_packed_command

    async def counted(self: rconn.AbstractConnection, command: Any, check_health: bool = True) -> None:
        writes[0] += 1
        await send(self, command, check_health)

    monkeypatch.setattr(rconn.AbstractConnection, "send_packed_command", counted)
    await publisher.publish(A, "news", "again")
    assert writes[0] == 1 + 5  # the charge with the subscriptions, then one script per copy
