"""A bounded in-memory event store: SSE streams can be resumed after a dropped connection.

With it the HTTP front sends a priming event id and a ``retry`` hint on every SSE stream and
replays what a client missed after ``Last-Event-ID``. Memory is bounded: at most
``max_events`` events in all, the oldest dropped first, and none older than ``ttl_s`` (a
client that comes back later than that gets no replay, as if the store had none). The SDK
tells the store stream ids only, not sessions, so a closed session's events go by age.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable

import anyio
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage


class BoundedEventStore(EventStore):
    def __init__(
        self, max_events: int = 10_000, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_events
        self._ttl = ttl_s
        self._clock = clock
        # event id -> (stream, message, stored at); insertion order is age order
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None, float]] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()

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
        while events and (len(events) > self._max or next(iter(events.values()))[2] < horizon):
            events.popitem(last=False)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        async with self._lock:
            eid = next(self._ids)
            self._events[eid] = (stream_id, message, self._clock())
            self._expire()
            return str(eid)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        try:
            last = int(last_event_id)
        except ValueError:
            return None
        async with self._lock:
            self._expire()
            hit = self._events.get(last)
            if hit is None:
                return None
            stream = hit[0]
            later = [(eid, msg) for eid, (sid, msg, _) in self._events.items() if eid > last and sid == stream]
        for eid, msg in later:
            if msg is not None:
                await send_callback(EventMessage(msg, str(eid)))
        return stream
