"""The agent bus: direct messages, request/response and publish/subscribe between agents.

The sender of every message is the caller's agent (``Principal.agent``), never an argument.
Sending: policy (``bus/send``, ``bus/publish``) -> seal (AES-256-GCM + Ed25519) -> durable
enqueue into the recipient's bounded inbox. Receiving is ``gateway.bus.receiving``: every
check before decrypting; a message that fails is rejected, counted, audited, never delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from gateway.bus.backend import BusBackend, quiet
from gateway.bus.counts import Caps
from gateway.bus.crypto import KeyRing
from gateway.bus.membership import Membership
from gateway.bus.message import SecureMessage, new_id, pattern_regex, validate_topic
from gateway.bus.receiving import REPLY_SUFFIX, Authorizer, Granted, Received, Receiver, grants
from gateway.bus.results import RECEIVE_MAX_BYTES, item_bytes_of_body, may_not_fit_a_receive, receive_ceiling
from gateway.bus.retire import Retirements
from gateway.bus.sealing import Head, Sealer, ttl_ms_of
from gateway.config.sections import SUBSCRIPTION_TTL_MAX_S
from gateway.context import Principal
from gateway.errors import (
    ArgumentsInvalid,
    BusError,
    BusQuotaExceeded,
    BusTimeout,
    ConfigError,
    ContentFlagged,
    PolicyDenied,
    RateLimited,
)
from gateway.events import Event, EventSink
from gateway.policy.inputdoc import CallCounters
from gateway.screen.asread import Reading, screened
from gateway.screen.screener import json_keys, json_texts

__all__ = ["Authorizer", "Bus", "Published", "Received", "pattern_regex", "validate_topic"]

_logger = logging.getLogger("symbi.bus")

MAX_OPEN_REQUESTS = 10_000


@dataclass(frozen=True, slots=True)
class Published:
    id: str
    delivered_to: int
    refused: tuple[str, ...]  # subscribers whose buffer was full (the publisher is told)


class Bus(Membership):
    def __init__(
        self,
        backend: BusBackend,
        ring: KeyRing,
        *,
        events: EventSink,
        buffer_size: int,
        max_age_s: float = 86400.0,
        skew_s: float = 30.0,
        max_body_bytes: int = 256 * 1024,
        max_subscriptions: int = 256,
        subscription_ttl_s: float = 86400.0,
        max_bytes_per_principal: int = 256 * 1024 * 1024,
        authorize: Authorizer | None = None,
        counters: CallCounters | None = None,
        resolve: Callable[[str], str | None] | None = None,
    ) -> None:
        self.backend = backend
        self.ring = ring
        self.events = events
        self.buffer_size = buffer_size
        self.max_age_ms = int(max_age_s * 1000)
        self.skew_ms = int(skew_s * 1000)
        self.max_body_bytes = max_body_bytes
        self.max_subscriptions = max_subscriptions  # per agent (bus.max_subscriptions_per_agent)
        if not 0 < subscription_ttl_s <= SUBSCRIPTION_TTL_MAX_S:  # (the config's check; NaN fails it)
            raise ConfigError(
                f"bus.subscription_ttl_s must be over 0 and at most {SUBSCRIPTION_TTL_MAX_S}, not {subscription_ttl_s}"
            )
        self.subscription_ms = max(int(subscription_ttl_s * 1000), 1)  # bus.subscription_ttl_s
        # bus.max_bytes_per_principal, the subscriptions, the requests its agents may answer:
        # counted in this process (embedded) or in Redis, across processes
        caps = Caps(max_bytes_per_principal, self.max_age_ms, max_subscriptions, MAX_OPEN_REQUESTS)
        self.counts = backend.counts(caps)
        self._authorize = authorize
        self._counters = counters or CallCounters()
        self._resolve = resolve
        self._waiting: dict[str, asyncio.Future[Received]] = {}
        self._pumps: dict[str, anyio.Lock] = {}
        self.receiver = Receiver(backend, ring, events, max_age_ms=self.max_age_ms, skew_ms=self.skew_ms)
        self.sealer = Sealer(ring, self.receiver, max_age_ms=self.max_age_ms, max_body_bytes=max_body_bytes)
        self._tasks: set[asyncio.Task[None]] = set()
        self._left: list[str] = []
        self._rechecking: set[str] = set()
        self._rechecker: asyncio.Task[None] | None = None
        self._published: set[str] = set()  # agents whose directory entry this process wrote
        self._names: dict[str, str] = {}  # agent id -> the runtime's name for it
        self._configured: dict[str, str] = {}  # configured (hosted) agents' stable ids -> principal
        # agents that ended for good
        self.retirements = Retirements(backend, ring, lambda agent: self.receiver.keys.pop(agent, None))

    async def _decide(
        self, kind: str, principal: Principal, recipient: dict[str, Any] | None, topic: str | None
    ) -> None:
        meta = {"kind": kind, "recipient": recipient, "topic": topic}
        if self._authorize is not None:
            decision = await self._authorize(kind, principal, recipient, topic)
            if not decision.allow:
                self._emit(Event.BUS_DENIED, {**meta, "reasons": list(decision.reasons)}, principal)
                raise PolicyDenied(f"policy denied {kind}", reasons=list(decision.reasons))
            limit = decision.conditions.get("rate_limit")
            assert principal.agent is not None
            if not self._counters.try_acquire(f"agent:{principal.agent}", "bus", limit):
                reason = f"agent {principal.agent} reached its bus rate limit of {limit} messages per minute"
                self._emit(Event.BUS_DENIED, {**meta, "reasons": [reason]}, principal)
                raise RateLimited(reason)

    def _emit(
        self,
        event: Event,
        details: dict[str, Any],
        principal: Principal | None = None,
        agent: str | None = None,
    ) -> None:
        self.events.emit(
            event,
            details,
            principal=principal.id if principal else None,
            agent=principal.agent if principal else agent,
        )

    def _sized(self, body: Any) -> bytes:
        """The body as stored (``Sealer.body``: JSON, within ``bus.max_body_bytes``); refused
        when its message could not fit one receive's result (``gateway.bus.results``): taken
        alone by a receive, that result would be cut, the message lost though marked delivered.

        Raises:
            ArgumentsInvalid: too large; nothing is sent.
        """
        data = self.sealer.body(body)
        if may_not_fit_a_receive(data) and item_bytes_of_body(body) > receive_ceiling():
            raise ArgumentsInvalid(
                f"body is {len(data)} bytes and would not fit one bus__receive result "
                f"({RECEIVE_MAX_BYTES} bytes, the body escaped twice): send it in parts"
            )
        return data

    async def _screen(self, kind: str, principal: Principal, body: Any) -> None:
        """Refused when a string in the body speaks to its readers' model (the tool definitions'
        high screening findings): a message lands in the receiving agent's context, a topic one
        in every subscriber's. Recorded as ``bus.denied`` with the rules and fields, never the
        body. After the policy's decision: a denied sender spends no worker on it.

        Raises:
            ContentFlagged: nothing is sent.
        """
        # as written and as read (tag characters, formatting splitting a word), as memory is
        # the second reading costs ~5x the first (400 KB: 0.09 s -> 0.5 s): off the event loop
        found = await anyio.to_thread.run_sync(_screen_body, body)
        flagged = found.findings
        if flagged:
            reasons = Reading.reasons(flagged)
            self._emit(Event.BUS_DENIED, {"kind": kind, "reasons": reasons}, principal)
            raise ContentFlagged(f"{kind}: the message was not sent: screening flagged it", reasons=reasons)

    async def _deliver(
        self, principal: Principal, msg: SecureMessage, inbox: str, charged: str | None = None
    ) -> None:
        # a topic delivery may fill half an inbox (at least one): publishers of topics a
        # subscriber follows, other principals among them, never leave its direct messages
        # and requests no room (a publication flood made its peers' sends bus_buffer_full)
        limit = self.buffer_size if msg.topic is None else max(self.buffer_size // 2, 1)
        now = int(time.time() * 1000)
        charged = charged or principal.qualified  # whose budget it counts against
        try:
            await self.counts.deliver(inbox, msg, limit, charged, now)
        except BusError as e:
            self._emit(
                Event.BUS_DELIVERY_FAILED, {**msg.metadata(), "inbox": inbox, "error_code": e.code}, principal
            )
            if e.code == "bus_buffer_full":
                await quiet(self.backend.bump("buffer_full"))
            raise
        self.sealer.last[(msg.sender, msg.channel)] = msg.id
        self.retirements.sent(msg.sender, msg.expires_ms)

    # -- direct, request/response ----------------------------------------------------------

    async def send(
        self, principal: Principal, to: Any, body: Any, *, ttl_s: float | None = None
    ) -> SecureMessage:
        data = self._sized(body)
        me = await self._me(principal)
        agent, peer_principal = await self._peer(to)
        await self._decide("bus/send", principal, {"agent": agent, "principal": peer_principal}, None)
        await self._screen("bus/send", principal, body)
        ttl_ms = self._kept(agent, None if ttl_s is None else ttl_ms_of(ttl_s, self.max_age_ms))
        msg = await self.sealer.seal(me, "direct", data, to=agent, ttl_ms=ttl_ms)
        await self._deliver(principal, msg, agent)
        self._emit(Event.BUS_SEND, msg.metadata(), principal)
        return msg

    async def request(self, principal: Principal, to: Any, body: Any, *, timeout_s: float) -> Received:
        if not (0 < timeout_s <= self.max_age_ms / 1000):
            raise ArgumentsInvalid("timeout_ms must be positive and within bus.max_age_s")
        started = time.monotonic()
        data = self._sized(body)
        me = await self._me(principal)
        agent, peer_principal = await self._peer(to)
        await self._decide("bus/send", principal, {"agent": agent, "principal": peer_principal}, None)
        await self._screen("bus/send", principal, body)
        # the request expires when the requester stops waiting: never answered too late
        ttl_ms = self._kept(agent, max(int((timeout_s - (time.monotonic() - started)) * 1000), 1))
        msg = await self.sealer.seal(me, "request", data, to=agent, ttl_ms=ttl_ms)
        fut: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        self._waiting[msg.id] = fut
        try:
            await self._deliver(principal, msg, agent)
            self._emit(Event.BUS_SEND, msg.metadata(), principal)
            with anyio.move_on_after(timeout_s - (time.monotonic() - started)):
                return await self._await_reply(principal, me.agent, fut)
            self._emit(
                Event.BUS_REQUEST_TIMEOUT,
                {"id": msg.id, "recipient": agent, "timeout_ms": int(timeout_s * 1000)},
                principal,
            )
            raise BusTimeout(
                f"no reply from {agent} within {int(timeout_s * 1000)} ms",
                reasons=[f"request {msg.id} to {agent} timed out after {int(timeout_s * 1000)} ms"],
            )
        finally:
            self._waiting.pop(msg.id, None)

    async def _await_reply(self, principal: Principal, agent: str, fut: asyncio.Future[Received]) -> Received:
        """One waiter at a time pulls the agent's reply inbox and hands each reply to its request."""
        lock = self._pumps.setdefault(agent, anyio.Lock())
        while not fut.done():
            if lock.locked():
                await asyncio.wait({fut}, timeout=0.05)
                continue
            async with lock:
                while not fut.done():
                    for r in await self._take(agent, agent + REPLY_SUFFIX, 64, 1.0):
                        waiter = self._waiting.get(r.reply_to or "")
                        if waiter is not None and not waiter.done():
                            waiter.set_result(r)
                        else:
                            self._emit(
                                Event.BUS_REPLY_LATE,
                                {"id": r.id, "reply_to": r.reply_to, "sender": r.sender},
                                principal,
                            )
        return fut.result()

    async def reply(self, principal: Principal, request_id: Any, body: Any) -> SecureMessage:
        data = self._sized(body)  # both before the open request is taken
        await self._screen("bus/send", principal, body)
        me = await self._me(principal)
        if not isinstance(request_id, str):
            raise ArgumentsInvalid("request_id must be a string")
        open_request = await self.counts.open_pop(me.agent, request_id)
        if open_request is None:
            raise BusError(
                f"no open request {request_id!r} for this agent (unknown, answered or not received)"
            )
        requester, expires_ms = open_request
        agent, peer_principal = await self._peer(requester)
        await self._decide("bus/send", principal, {"agent": agent, "principal": peer_principal}, None)
        ttl = max(expires_ms - int(time.time() * 1000), 1)
        msg = await self.sealer.seal(me, "reply", data, to=agent, ttl_ms=ttl, reply_to=request_id)
        await self._deliver(principal, msg, agent + REPLY_SUFFIX)
        self._emit(Event.BUS_SEND, msg.metadata(), principal)
        return msg

    # -- topics ----------------------------------------------------------------------------

    async def publish(self, principal: Principal, topic: Any, body: Any) -> Published:
        data = self._sized(body)
        me = await self._me(principal)
        topic = validate_topic(topic)
        await self._decide("bus/publish", principal, None, topic)
        await self._screen("bus/publish", principal, body)
        now = int(time.time() * 1000)
        # one message (one id, one place in the chain), sealed and signed for each subscriber
        head = Head(
            new_id(), now, now + self.max_age_ms, self.sealer.last.get((me.agent, f"topic:{topic}")), None
        )
        # the publisher's budget counts the message once, each subscriber's principal its
        # copies (a subscriber of many agents never drains a publisher's, nor fills the disk)
        subs = await self.counts.publication(principal.qualified, len(data), now)
        # every subscriber but the publisher itself
        targets = sorted(
            a
            for a, pats in subs.items()
            if a != me.agent and any(pattern_regex(p).match(topic) for p in pats)
        )
        refused: list[str] = []
        # whose budget each copy counts against: the subscribers' entries, read at once (one
        # round trip for those not verified and cached yet, not one per subscriber)
        found = await self.receiver.sender_keys_many(targets)
        for agent in targets:
            keys = found[agent]
            try:
                msg = await self.sealer.seal_for(me, "topic", data, head, to=agent, topic=topic)
                await self._deliver(
                    principal, msg, agent, f"topics-to {agent if isinstance(keys, str) else keys[2]}"
                )
            except BusError:
                refused.append(agent)
        meta = head.topic_metadata(me.agent, topic, len(data) + 16)
        self._emit(Event.BUS_PUBLISH, {**meta, "subscribers": len(targets), "refused": refused}, principal)
        return Published(head.id, len(targets) - len(refused), tuple(refused))

    async def subscribe(self, principal: Principal, pattern: Any) -> int:
        """Subscribe (or renew a subscription held) for ``bus.subscription_ttl_s``: the grant
        the policy decided now lasts that long, no longer. Returns when it expires (ms)."""
        me = await self._me(principal)
        pattern = validate_topic(pattern, pattern=True)
        await self._decide("bus/subscribe", principal, None, pattern)
        now = int(time.time() * 1000)
        until_ms = now + self.subscription_ms
        try:
            await self.counts.subscribe(me.agent, pattern, until_ms, now)
        except BusQuotaExceeded as e:
            self._emit(
                Event.BUS_DENIED, {"kind": "bus/subscribe", "topic": pattern, "reasons": e.reasons}, principal
            )
            raise
        self._emit(Event.BUS_SUBSCRIBE, {"topic": pattern, "expires_ms": until_ms}, principal)
        return until_ms

    async def unsubscribe(self, principal: Principal, pattern: Any) -> bool:
        me = await self._me(principal)
        pattern = validate_topic(pattern, pattern=True)
        removed = await self.backend.unsubscribe(me.agent, pattern)
        self._emit(Event.BUS_UNSUBSCRIBE, {"topic": pattern, "removed": removed}, principal)
        return removed

    # -- receiving -------------------------------------------------------------------------

    async def receive(
        self, principal: Principal, *, max_items: int = 16, wait_s: float = 0.0, max_bytes: int | None = None
    ) -> list[Received]:
        """Up to ``max_items`` messages, oldest first, waiting up to ``wait_s`` for one; with
        ``max_bytes`` only as many as fit it (``Received.result_bytes``): the others stay for
        the next receive, and so does one that alone does not fit it (``gateway.bus.receiving``)."""
        me = await self._me(principal)
        if not (1 <= max_items <= 1000):
            raise ArgumentsInvalid("max must be between 1 and 1000")
        deadline = time.monotonic() + max(wait_s, 0.0)
        # asked before anything is settled: a topic no longer granted leaves its messages pending
        granted = grants(self._authorize, principal, self._emit) if self._authorize is not None else None
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            got = await self._take(me.agent, me.agent, max_items, left, granted, max_bytes)
            if got or time.monotonic() >= deadline:
                return got

    async def _take(
        self,
        agent: str,
        inbox: str,
        max_items: int,
        wait_s: float,
        granted: Granted | None = None,
        max_bytes: int | None = None,
    ) -> list[Received]:
        out = await self.receiver.take(agent, inbox, max_items, wait_s, granted, max_bytes)
        for r in out:
            if r.kind == "request":  # answerable with reply() until it expires
                await self.counts.open_add(agent, r.id, r.sender, r.expires_ms)
        return out

    @property
    def rejected(self) -> dict[str, int]:
        """Rejected messages by reason, since start."""
        return self.receiver.rejected

    # -- housekeeping ----------------------------------------------------------------------

    async def expire(self) -> int:
        now = int(time.time() * 1000)
        for agent in self.ring.due(now - self.max_age_ms):  # ended, and away for bus.max_age_s
            self._leave(agent, now)
        await self.retirements.sweep(now)
        self.counts.sweep(now)
        n = await self.backend.expire(now, self.max_age_ms)  # (converts a layout before first)
        if self._left:  # (the backend could not be reached at start)
            await self.clear_left_behind()
        if n:
            self.events.emit(Event.BUS_EXPIRED, {"count": n})
        return n


def _screen_body(body: Any) -> Reading:
    """A body's strings and keys, as written and as read (run in a worker thread)."""
    return screened(list(json_texts("body", body)), names=json_keys("body", body), joined="body (joined)")
