"""A bounded in-memory event store: SSE streams can be resumed after a dropped connection.

With it the HTTP front sends a priming event id and a ``retry`` hint on every SSE stream and
replays what a client missed after ``Last-Event-ID``. Memory is bounded: at most
``max_events`` events in all, the oldest dropped first (a client that comes back later than
that gets no replay, as if the store had none).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import anyio
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage


class BoundedEventStore(EventStore):
    def __init__(self, max_events: int = 10_000) -> None:
        self._max = max_events
        self._events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        async with self._lock:
            eid = next(self._ids)
            self._events[eid] = (stream_id, message)
            while len(self._events) > self._max:
                self._events.popitem(last=False)
            return str(eid)

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        try:
            last = int(last_event_id)
        except ValueError:
            return None
        async with self._lock:
            hit = self._events.get(last)
            if hit is None:
                return None
            stream = hit[0]
            later = [(eid, msg) for eid, (sid, msg) in self._events.items() if eid > last and sid == stream]
        for eid, msg in later:
            if msg is not None:
                await send_callback(EventMessage(msg, str(eid)))
        return stream
