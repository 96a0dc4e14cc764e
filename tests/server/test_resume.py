"""BoundedEventStore: replay after Last-Event-ID, bounded by count and by age (injected clock)."""

from __future__ import annotations

import anyio
from mcp.server.streamable_http import EventMessage
from mcp.types import ErrorData, JSONRPCError, JSONRPCNotification, JSONRPCResponse

from gateway.server.resume import STREAM_OWNER, BoundedEventStore, LaneResult, StreamOwner

BOB = StreamOwner("bob", "session-1")


def _msg(n: int) -> JSONRPCNotification:
    return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n})


def test_replays_later_events_of_the_same_stream_only() -> None:
    async def main() -> None:
        STREAM_OWNER.set(BOB)
        store = BoundedEventStore()
        first = await store.store_event("s1", _msg(0))
        await store.store_event("s2", _msg(1))
        await store.store_event("s1", _msg(2))
        got: list[EventMessage] = []

        async def send(ev: EventMessage) -> None:
            got.append(ev)

        assert await store.replay_events_after(first, send) == "s1"
        assert [e.message.params["n"] for e in got] == [2]  # type: ignore[union-attr, index]  # _msg's notification

    anyio.run(main)


def test_events_expire_by_count_and_by_age() -> None:
    async def main() -> None:
        STREAM_OWNER.set(BOB)
        now = [0.0]
        store = BoundedEventStore(max_events=3, ttl_s=60.0, clock=lambda: now[0])
        ids = [await store.store_event("s", _msg(i)) for i in range(5)]
        assert len(store) == 3  # the oldest two went first
        assert await store.replay_events_after(ids[0], _never) is None
        now[0] += 61.0
        assert len(store) == 0  # nothing outlives the TTL, even without new events
        assert store  # and an empty store is still a store (the SDK tests `if event_store:`)
        assert await store.replay_events_after(ids[4], _never) is None

    anyio.run(main)


async def _never(ev: EventMessage) -> None:
    raise AssertionError("nothing should be replayed")


def test_only_the_streams_own_session_and_principal_resume_it() -> None:
    async def main() -> None:
        store = BoundedEventStore()
        STREAM_OWNER.set(BOB)
        first = await store.store_event("2", _msg(0))
        STREAM_OWNER.set(StreamOwner("carol", "session-2"))
        await store.store_event("2", _msg(1))  # the same stream name in carol's session
        STREAM_OWNER.set(BOB)
        await store.store_event("2", _msg(2))
        for other in (
            StreamOwner("carol", "session-2"),
            StreamOwner("carol", "session-1"),
            StreamOwner("bob", "session-3"),
            None,
        ):
            STREAM_OWNER.set(other)
            assert await store.replay_events_after(first, _never) is None
        STREAM_OWNER.set(BOB)
        got: list[EventMessage] = []

        async def send(ev: EventMessage) -> None:
            got.append(ev)

        assert await store.replay_events_after(first, send) == "2"
        assert [e.message.params["n"] for e in got] == [2]  # type: ignore[union-attr, index]  # _msg's notification

    anyio.run(main)


def test_an_event_stored_without_an_owner_is_never_replayed_and_ids_are_not_a_counter() -> None:
    async def main() -> None:
        store = BoundedEventStore()
        STREAM_OWNER.set(None)
        orphan = await store.store_event("s", _msg(0))
        STREAM_OWNER.set(BOB)
        ids = [await store.store_event("s", _msg(i)) for i in range(3)]
        assert await store.replay_events_after(orphan, _never) is None
        assert len(set(ids)) == 3 and all(len(i) >= 16 and not i.isdigit() for i in ids)
        assert await store.replay_events_after("not-an-id", _never) is None

    anyio.run(main)


def test_a_lane_result_replays_as_the_response_the_lane_sent() -> None:
    """``LaneResult``: the SSE lane's answer is kept without its model; a replay gets the same
    response (the JSON the SDK's router would have stored and replayed), and only its owner."""
    result = {"content": [{"type": "text", "text": "hi"}], "isError": False}

    async def main() -> None:
        store = BoundedEventStore()
        STREAM_OWNER.set(BOB)
        priming = await store.store_event("7", None)
        await store.store_event("7", LaneResult(7, result))
        got: list[EventMessage] = []

        async def send(ev: EventMessage) -> None:
            got.append(ev)

        assert await store.replay_events_after(priming, send) is None  # answered: nothing more
        expected = JSONRPCResponse(jsonrpc="2.0", id=7, result=result)
        assert [e.message.model_dump_json(by_alias=True, exclude_unset=True) for e in got] == [
            expected.model_dump_json(by_alias=True, exclude_unset=True)
        ]
        STREAM_OWNER.set(StreamOwner("mallory", "session-1"))  # another principal: nothing
        assert await store.replay_events_after(priming, _never) is None

    anyio.run(main)


def test_event_ids_are_random_url_safe_and_token_urlsafe_sized() -> None:
    import re

    from gateway.server.resume import event_id

    ids = {event_id() for _ in range(2_000)}
    assert len(ids) == 2_000  # 96 random bits each: no repeats
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{16}", i) for i in ids)
    assert any("-" in i or "_" in i for i in ids)  # the URL-safe alphabet, not base64's + and /


def test_a_replay_that_reaches_the_answer_ends_the_stream() -> None:
    # Attack: resuming a finished call's stream made the SDK register it again and hold the
    # connection open for events that never come; one connection per resumption.
    async def main() -> None:
        STREAM_OWNER.set(BOB)
        store = BoundedEventStore()
        priming = await store.store_event("7", None)
        await store.store_event("7", _msg(0))  # a progress notification: not the end
        assert await store.replay_events_after(priming, _ignore) == "7"  # still running
        await store.store_event("7", LaneResult(7, {"content": []}))
        assert await store.replay_events_after(priming, _ignore) is None
        error = await store.store_event("8", None)
        await store.store_event("8", JSONRPCError(jsonrpc="2.0", id=8, error=ErrorData(code=-1, message="x")))
        assert await store.replay_events_after(error, _ignore) is None

    anyio.run(main)


def test_a_full_store_drops_the_events_of_who_holds_the_most() -> None:
    # Attack: a flood of pings in one principal's session pushed every other principal's
    # stored answers out of the one shared store.
    async def main() -> None:
        store = BoundedEventStore(max_events=10)
        STREAM_OWNER.set(BOB)
        kept = await store.store_event("2", None)
        await store.store_event("2", LaneResult(2, {"content": []}))
        STREAM_OWNER.set(StreamOwner("carol", "session-2"))
        for n in range(100):
            await store.store_event(str(n), _msg(n))
        assert len(store) == 10
        STREAM_OWNER.set(BOB)
        got: list[EventMessage] = []

        async def send(ev: EventMessage) -> None:
            got.append(ev)

        assert await store.replay_events_after(kept, send) is None
        assert [type(e.message) for e in got] == [JSONRPCResponse]  # bob's answer is still there
        now = [0.0]  # and by age, each principal's oldest goes first, as before
        aged = BoundedEventStore(ttl_s=5.0, clock=lambda: now[0])
        first = await aged.store_event("s", _msg(0))
        now[0] = 10.0
        await aged.store_event("s", _msg(1))
        assert len(aged) == 1 and await aged.replay_events_after(first, _never) is None

    anyio.run(main)


async def _ignore(ev: EventMessage) -> None:
    return None


def test_a_full_store_always_drops_from_a_principal_holding_the_most() -> None:
    """Against a model (a max over every principal, recomputed each time) on seeded traffic of
    twelve principals: the store's counts stay the model's (which of several principals tied
    for the most gives way does not change them). Then with events expiring by age as well:
    who holds the most is still known exactly."""
    import random

    rng = random.Random(32)
    now = [0.0]

    def counts(store: BoundedEventStore) -> list[int]:
        return sorted(len(d) for d in store._held.values())

    async def main() -> None:
        store = BoundedEventStore(max_events=40, clock=lambda: now[0])
        model: list[str] = []  # principals, oldest event first
        for n in range(3_000):
            who = f"p{min(rng.randrange(24), 11)}"  # p11 sends about half of it all
            STREAM_OWNER.set(StreamOwner(who, f"s-{who}"))
            await store.store_event("1", _msg(n))
            model.append(who)
            if len(model) > 40:
                most = max(model.count(p) for p in model)
                model.remove(next(p for p in model if model.count(p) == most))  # its oldest
            assert len(store) == 40 or n < 40
            assert counts(store) == sorted(model.count(p) for p in set(model))
        aged = BoundedEventStore(max_events=40, ttl_s=3.0, clock=lambda: now[0])
        for n in range(3_000):
            now[0] += rng.choice((0.0, 0.01, 0.5))
            who = f"p{min(rng.randrange(24), 11)}"
            STREAM_OWNER.set(StreamOwner(who, f"s-{who}"))
            await aged.store_event("1", _msg(n))
            held = counts(aged)
            assert aged._most == (held[-1] if held else 0)
            assert {k: set(v) for k, v in aged._by_count.items()} == {
                c: {p for p, d in aged._held.items() if len(d) == c} for c in set(held)
            }

    anyio.run(main)
