"""A bounded in-memory event store: SSE streams can be resumed after a dropped connection.

With it the HTTP front sends a priming event id and a ``retry`` hint on every SSE stream and
replays what a client missed after ``Last-Event-ID``. Memory is bounded: at most
``max_events`` events in all, and none older than ``ttl_s`` (a client that comes back later
than that gets no replay, as if the store had none). When the store is full the event that
goes is the oldest of the principal holding the most: one principal's flood of calls pushes
out its own events, not everyone's. The SDK tells the store stream ids only, not sessions, so
a closed session's events go by age.

A replay that reaches its request's answer says the stream is done (no stream id back): the
SDK would otherwise register a resumed stream for a request that already ended and hold the
connection open for events that never come, one connection per resumption, past every limit.

The SDK shares one store among all sessions and names streams by request id (``"2"``) or
``_GET_stream``, names every session reuses. So each event is stored with its owner (a
``StreamOwner``: the session and principal of the request that opened the session, set by the
HTTP front in a context variable that the session's tasks inherit), and a resumption replays
only events whose owner is the resuming request's own session and principal. Event ids are
random, so they say nothing about other sessions' traffic. An event stored with no owner is
never replayed.
"""

from __future__ import annotations

import binascii
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCError, JSONRPCMessage, JSONRPCResponse


@dataclass
class StreamOwner:
    """Who a stream's events belong to. ``session`` is filled in once the SDK has minted the
    id (the initialize response), which is before any resumption can name it."""

    principal: str
    session: str | None = None

    def may_resume(self, other: StreamOwner | None) -> bool:
        return other is not None and other.principal == self.principal and other.session == self.session


_URLSAFE = bytes.maketrans(b"+/", b"-_")  # base64's alphabet to the URL-safe one


_MADE: list[str] = []  # random ids made ahead, taken by ``list.pop`` (atomic: threads may take)
_AHEAD = 256


def event_id() -> str:
    """A random event id: ``secrets.token_urlsafe(12)``'s (12 bytes of ``os.urandom``, 16
    URL-safe characters, no padding). Made 256 at a time from one ``os.urandom`` call: base64
    turns every 12 bytes into 16 characters on its own, so the ids are the text's 16-character
    slices (a system call and four C calls an event before)."""
    try:
        return _MADE.pop()
    except IndexError:
        text = binascii.b2a_base64(os.urandom(12 * _AHEAD), newline=False).translate(_URLSAFE).decode("ascii")
        _MADE.extend([text[i : i + 16] for i in range(16, len(text), 16)])
        return text[:16]


class LaneResult:
    """A lane call's result as the store keeps it (``gateway.server.httpsse``): its response
    model, which only a replay reads, is made when one replays it (a model per call cost ten
    calls of pydantic; the result is the call's validated wire result, which nobody changes)."""

    __slots__ = ("rid", "result")

    def __init__(self, rid: str | int, result: dict[str, Any]) -> None:
        self.rid = rid
        self.result = result

    def message(self) -> JSONRPCResponse:
        return result_message(self.rid, self.result)


def result_message(rid: str | int, result: dict[str, Any]) -> JSONRPCResponse:
    """The response to ``rid`` with a lane call's validated wire result (no second validation)."""
    return JSONRPCResponse.model_construct(jsonrpc="2.0", id=rid, result=result)


# set by the HTTP front around every MCP request (gateway.server.middleware.SessionScope)
STREAM_OWNER: ContextVar[StreamOwner | None] = ContextVar("symbi_stream_owner", default=None)


class BoundedEventStore(EventStore):
    def __init__(
        self, max_events: int = 10_000, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_events
        self._ttl = ttl_s
        self._clock = clock
        # event id -> (owner, stream, message, stored at); insertion order is age order
        self._events: OrderedDict[
            str, tuple[StreamOwner | None, StreamId, JSONRPCMessage | LaneResult | None, float]
        ] = OrderedDict()
        # principal ("" for no owner) -> its events' ids, oldest first: who gives way when full
        self._held: dict[str, deque[str]] = {}
        # how many events -> the principals holding that many, and the most any holds: who
        # holds the most is found at once (a max over every principal was one call each, per
        # event stored once the store is full)
        self._by_count: dict[int, dict[str, None]] = {}
        self._most = 0
        # No lock: neither method awaits while it reads or changes ``_events`` (one event
        # loop), and an anyio lock cost every stored event a trip round the loop.

    @property
    def max_events(self) -> int:
        return self._max

    def __bool__(self) -> bool:
        # the SDK asks `if event_store:`; an empty store is still a store (else no priming
        # event and no retry hint: conformance caught it)
        return True

    def __len__(self) -> int:
        self._expire()
        return len(self._events)

    def _expire(self) -> None:
        horizon = self._clock() - self._ttl
        events = self._events
        while len(events) > self._max:
            self._drop_from_largest()
        while events and next(iter(events.values()))[3] < horizon:
            eid, (owner, *_) = events.popitem(last=False)
            self._forget(owner.principal if owner is not None else "", eid)

    def _drop_from_largest(self) -> None:
        who = next(iter(self._by_count[self._most]))
        eid = self._held[who][0]
        del self._events[eid]
        self._forget(who, eid)

    def _recount(self, who: str, was: int, now: int) -> None:
        """``who`` holds ``now`` events instead of ``was`` (one more or one less)."""
        by = self._by_count
        if was:
            same = by[was]
            del same[who]
            if not same:
                del by[was]
        if now:
            by.setdefault(now, {})[who] = None
        if now > self._most:
            self._most = now
        elif was == self._most and was not in by:
            self._most = now  # who held the most alone; one less is the most now (or none: 0)

    def _forget(self, who: str, eid: str) -> None:
        """``eid``, ``who``'s oldest event, is gone (both orders are insertion order)."""
        held = self._held[who]
        held.popleft()
        self._recount(who, len(held) + 1, len(held))
        if not held:
            del self._held[who]

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | LaneResult | None) -> EventId:
        eid = event_id()
        now = self._clock()
        events = self._events
        owner = STREAM_OWNER.get()
        events[eid] = (owner, stream_id, message, now)
        who = owner.principal if owner is not None else ""
        held = self._held.get(who)
        if held is None:
            held = self._held[who] = deque()
        held.append(eid)
        self._recount(who, len(held) - 1, len(held))
        # the expiry's own first test, here: most stores find nothing to drop
        if len(events) > self._max or next(iter(events.values()))[3] < now - self._ttl:
            self._expire()
        return eid

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        asker = STREAM_OWNER.get()
        self._expire()
        hit = self._events.get(last_event_id)
        if hit is None or hit[0] is None or not hit[0].may_resume(asker):
            return None  # unknown, expired, or not the asker's: as if the store had none
        owner, stream = hit[0], hit[1]
        ids = iter(self._events.items())
        for eid, _ in ids:  # insertion order: skip up to and including the last one seen
            if eid == last_event_id:
                break
        # taken whole before the first send (which may wait): later stores do not change it
        later = [
            (eid, msg)
            for eid, (o, sid, msg, _) in ids
            if sid == stream and o is not None and owner.may_resume(o)
        ]
        answered = False
        for eid, msg in later:
            if isinstance(msg, LaneResult):
                msg = msg.message()
            if msg is not None:
                await send_callback(EventMessage(msg, eid))
                answered = answered or isinstance(msg, _ANSWERS)
        return None if answered else stream  # an answered request's stream has nothing more


# what ends a request's stream: its response or its error
_ANSWERS = (JSONRPCResponse, JSONRPCError)
