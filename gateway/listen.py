"""2026-07-28 ``subscriptions/listen`` streams that know who is listening.

The SDK's ``ListenHandler`` fans every event out to every open stream. A gateway must not:
a principal is told only about lists it can see and resources it may read. ``ListenHub``
serves the same wire contract (the acknowledgement first, every frame tagged with the
subscription id, only the kinds the client asked for, a bounded backlog) and keeps each
stream's principal, so a publisher pushes to the streams whose principal it chooses.

It is the one way anything in the gateway pushes to a 2026-era client: the catalogue's
list changes (``gateway.announce.Announcer``) and the bus's ``notifications/resources/updated`` for
``bus://inbox`` (through ``StreamOutbound``, the same ``outbound.notify`` shape a handshake-era
connection has, so a ``WatchedResourceBuiltin`` serves both eras alike).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.streams.memory
from mcp import types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import (
    SUBSCRIPTION_ID_META_KEY,
    ResourceUpdated,
    ServerEvent,
    event_matches,
    event_to_notification,
)

from gateway.context import Principal
from gateway.errors import TooManyListens

_logger = logging.getLogger("symbi.listen")

# Called when a stream opens (on=True) and closes (on=False) for each resource URI it asked
# about, with the object to push updates through; the front routes it to the URI's owner.
OnResources = Callable[[Principal, list[str], "StreamOutbound", bool], Awaitable[None]]


@dataclass(eq=False)
class ListenStream:
    """One open ``subscriptions/listen`` stream: who listens, for what, and its buffer."""

    principal: Principal
    honored: types.SubscriptionFilter
    uris: frozenset[str]
    send: anyio.streams.memory.MemoryObjectSendStream[ServerEvent]

    def wants(self, event: ServerEvent) -> bool:
        return event_matches(self.honored, self.uris, event)


class StreamOutbound:
    """``outbound.notify`` for a listen stream: what handshake-era connections offer, so a
    built-in that pushes ``notifications/resources/updated`` needs no second code path."""

    def __init__(self, hub: ListenHub, stream: ListenStream) -> None:
        self._hub = hub
        self._stream = stream
        self.outbound = self

    async def notify(self, method: str, params: dict[str, Any] | None) -> None:
        if method == "notifications/resources/updated" and params is not None:
            self._hub.deliver(self._stream, ResourceUpdated(uri=str(params["uri"])))


class ListenHub:
    """Serves ``subscriptions/listen`` and pushes events to chosen principals' streams."""

    def __init__(
        self,
        *,
        max_subscriptions: int = 1024,
        max_buffered_events: int = 1024,
        max_per_principal: int = 16,
    ) -> None:
        self._max_subscriptions = max_subscriptions
        self._max_buffered = max_buffered_events
        # each stream is an open request (a connection slot): one caller holds at most this many
        self._max_per_principal = max_per_principal
        self._streams: set[ListenStream] = set()
        self._held: dict[str, int] = {}  # qualified principal -> its open streams

    def __len__(self) -> int:
        return len(self._streams)

    def __bool__(self) -> bool:
        return True  # an empty hub is still the hub (never `hub or default`)

    def principals(self) -> dict[str, Principal]:
        """One principal per qualified id among the open streams (whom a change must be checked
        for); qualified, so a key and a JWT subject with the same name are asked about apart."""
        return {s.principal.qualified: s.principal for s in self._streams}

    def open(
        self, principal: Principal, asked: types.SubscriptionFilter
    ) -> tuple[ListenStream, anyio.streams.memory.MemoryObjectReceiveStream[ServerEvent]]:
        """Register a stream for ``principal`` honouring what it ``asked`` for; the caller reads
        the receive end and must ``discard`` the stream when it is done."""
        honored = types.SubscriptionFilter(
            tools_list_changed=True if asked.tools_list_changed else None,
            prompts_list_changed=True if asked.prompts_list_changed else None,
            resources_list_changed=True if asked.resources_list_changed else None,
            resource_subscriptions=list(asked.resource_subscriptions)
            if asked.resource_subscriptions
            else None,
        )
        who = principal.qualified
        held = self._held.get(who, 0)
        if held >= self._max_per_principal:
            n = self._max_per_principal
            raise TooManyListens(
                f"{n} listen streams of this caller are open (http.max_listens_per_principal = {n})"
            )
        send, recv = anyio.create_memory_object_stream[ServerEvent](self._max_buffered)
        stream = ListenStream(principal, honored, frozenset(honored.resource_subscriptions or ()), send)
        self._streams.add(stream)
        self._held[who] = held + 1
        return stream, recv

    def discard(self, stream: ListenStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            who = stream.principal.qualified
            left = self._held.get(who, 1) - 1
            if left > 0:
                self._held[who] = left
            else:
                self._held.pop(who, None)
        stream.send.close()

    def key_ids(self) -> set[str]:
        """The API key ids the open streams were opened with (the revoked-key sweep's)."""
        return {kid for s in self._streams if (kid := s.principal.key_id) is not None}

    def end_revoked(self, revoked: set[str], now: float) -> int:
        """End the streams of revoked API keys and of JWTs past their ``exp``: a listen stream
        is one request, authenticated once, open for as long as its client likes. Returns how
        many ended (each sends its final result, so the client re-listens and is refused)."""
        gone = [s for s in self._streams if s.principal.key_id in revoked or _expired(s.principal, now)]
        for stream in gone:
            _logger.info(
                "ending the listen stream of %s: its credential is no longer valid", stream.principal.id
            )
            self.discard(stream)
        return len(gone)

    async def serve(
        self,
        ctx: ServerRequestContext[Any],
        params: types.SubscriptionsListenRequestParams,
        principal: Principal,
        on_resources: OnResources | None = None,
    ) -> types.SubscriptionsListenResult:
        """One listen stream, open until the client goes away (or ``close``)."""
        subscription_id = ctx.request_id
        if subscription_id is None:
            raise MCPError(types.INVALID_REQUEST, "subscriptions/listen requires a request id")
        if len(self._streams) >= self._max_subscriptions:
            raise MCPError(types.INTERNAL_ERROR, "Subscription limit reached")
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        # registered before the ack, so an event published meanwhile is buffered, not lost
        stream, recv = self.open(principal, params.notifications)
        honored = stream.honored
        outbound = StreamOutbound(self, stream)  # held here: watchers keep it weakly
        uris = sorted(stream.uris)
        try:
            if uris and on_resources is not None:
                await on_resources(principal, uris, outbound, True)
            await ctx.session.send_notification(
                types.SubscriptionsAcknowledgedNotification(
                    params=types.SubscriptionsAcknowledgedNotificationParams(
                        notifications=honored, _meta=meta
                    )
                ),
                related_request_id=subscription_id,
            )
            async for event in recv:
                await ctx.session.send_notification(
                    event_to_notification(event, meta), related_request_id=subscription_id
                )
        finally:
            self.discard(stream)
            recv.close()
            if uris and on_resources is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await on_resources(principal, uris, outbound, False)
                    except Exception:
                        _logger.debug("unwatching %s after a listen stream failed", uris, exc_info=True)
        return types.SubscriptionsListenResult(_meta=meta)

    def push(self, event: ServerEvent, to: Iterable[str] | None = None) -> int:
        """Queue ``event`` on every stream that asked for its kind and whose principal's
        qualified id is in ``to`` (every stream when None). Returns how many streams got it."""
        ids = None if to is None else set(to)
        n = 0
        for stream in list(self._streams):
            if (ids is None or stream.principal.qualified in ids) and self.deliver(stream, event):
                n += 1
        return n

    def deliver(self, stream: ListenStream, event: ServerEvent) -> bool:
        if not stream.wants(event):
            return False
        try:
            stream.send.send_nowait(event)
        except anyio.ClosedResourceError:
            return False
        except anyio.WouldBlock:
            # a client that stopped reading: end its stream (it re-listens and refetches)
            _logger.warning("listen stream of %s: backlog full, ending it", stream.principal.id)
            self.discard(stream)
            return False
        return True

    def close(self) -> None:
        """End every open stream gracefully (each sends its final result)."""
        for stream in list(self._streams):
            stream.send.close()


def _expired(p: Principal, now: float) -> bool:
    exp = p.expires
    return exp is not None and exp < now
