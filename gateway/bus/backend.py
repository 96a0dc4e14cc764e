"""The one interface both bus backends implement (embedded SQLite, Redis Streams).

A backend stores and moves ``SecureMessage`` objects only (ciphertext); it never sees a key
or a body. Inboxes are FIFO per agent; an entry stays pending until ``settle`` records what
became of it (delivered, rejected, expired), which is what makes delivery at-least-once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.bus.counts import Caps, Counts
from gateway.bus.crypto import PublicKeys
from gateway.bus.message import SecureMessage

_logger = logging.getLogger("symbi.bus")

Outcome = Literal["delivered", "rejected", "expired"]
COUNTERS = ("sent", "delivered", "rejected", "expired", "buffer_full")


@dataclass(frozen=True, slots=True)
class Pending:
    """One inbox entry: the backend's reference to it and the message (or why it is unreadable)."""

    ref: str
    msg: SecureMessage | None
    error: str | None = None  # set when the stored entry could not even be parsed


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as ``symbi bus verify`` / ``tail`` see it (metadata + signature, no key)."""

    inbox: str
    state: str  # pending | delivered | rejected | expired
    msg: SecureMessage | None
    error: str | None = None


class BusBackend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    # public key directory
    async def publish_keys(self, entry: PublicKeys) -> None: ...

    async def lookup_keys(self, agent: str) -> PublicKeys | None: ...

    async def lookup_keys_many(self, agents: list[str]) -> dict[str, PublicKeys]:
        """The entries of those ``agents`` the directory holds, read at once."""

    async def lookup_name(self, name: str) -> str | None:
        """The agent id last registered under ``name`` (its entry's HMAC binds the two)."""

    async def forget_agent(self, agent: str, inboxes: tuple[str, ...], name: str = "") -> None:
        """The agent ended for good: its directory entry (and ``name`` if it still names it),
        its subscriptions and its inboxes go; what waited there counts as expired."""

    async def leave(self, agent: str, inboxes: tuple[str, ...]) -> None:
        """The agent ended for good but its directory entry stays (what it sent is verified
        with it): its subscriptions, the requests it may answer and its inboxes go now."""

    def footprint(self) -> dict[str, int]:
        """Sizes of what this backend holds in memory per agent or inbox (for ``/api/state``)."""

    def counts(self, caps: Caps) -> Counts:
        """Where the bus counts its caps with this backend (``gateway.bus.counts``)."""

    # inboxes
    async def enqueue(self, inbox: str, msg: SecureMessage, limit: int) -> None:
        """Append durably, or raise ``BusBufferFull`` when ``limit`` entries are pending."""

    async def fetch(self, inbox: str, max_items: int, wait_s: float) -> list[Pending]:
        """Up to ``max_items`` pending entries, oldest first, waiting up to ``wait_s`` for one."""

    async def settle(self, inbox: str, outcomes: list[tuple[str, Outcome]]) -> None:
        """Record what became of fetched entries; they are no longer pending."""

    async def pending_count(self, inbox: str) -> int: ...

    async def wait_arrival(
        self, inbox: str, timeout_s: float, cursor: Any
    ) -> tuple[Any, list[SecureMessage | None]]:
        """What was appended to ``inbox`` after ``cursor`` (None: from now), waiting up to
        ``timeout_s``; returns the new cursor. Reads only: nothing is taken (push notifications)."""

    # replay window
    async def first_seen(self, agent: str, items: list[tuple[str, int]]) -> set[str]:
        """Record each (message id, keep-until ms) as seen by ``agent``; returns the ids that
        were not seen before (the others are replays)."""

    # topic subscriptions: each lasts until its expiry (``bus.subscription_ttl_s``)
    async def subscribe(self, agent: str, pattern: str, until_ms: int) -> None:
        """Hold the subscription until ``until_ms`` (one held already: renewed to it), stamped
        made or renewed now by the store's own clock (Redis's ``TIME``: the one clock
        ``unsubscribe_parked`` compares with, whichever process subscribed or parks)."""

    async def unsubscribe(self, agent: str, pattern: str) -> bool: ...

    async def unsubscribe_parked(self, agents: list[str]) -> list[str]:
        """Parked agents (``Bus.park``, the start's left-behind ones): no longer held live by
        this process, and their subscriptions made or renewed up to now (the store's clock) go,
        but for those another live gateway process sharing the store holds (``hold``): returned,
        theirs stay. All of them in one round trip (a batch per script on Redis)."""

    async def hold(self, agent: str) -> None:
        """``agent`` is live on this process (until it is parked or ends, or the process stops
        beating): a park of it on another process leaves its subscriptions alone."""

    async def subscriptions(self) -> dict[str, set[str]]:
        """The subscriptions not expired (agent -> patterns): an expired one grants nothing."""

    async def subscriptions_of(self, agent: str) -> set[str]:
        """The patterns ``agent`` subscribed to, not expired (its own, not every agent's read)."""

    # housekeeping and operators
    async def expire(self, now_ms: int, retain_ms: int) -> int:
        """Remove pending entries past their expiry (returns how many), prune old settled
        ones and the subscriptions past theirs."""

    async def bump(self, counter: str, n: int = 1) -> None: ...

    async def stats(self) -> dict[str, object]: ...


async def quiet(aw: Awaitable[None]) -> None:
    """A counter update that may fail without failing what it counts."""
    try:
        await aw
    except Exception:
        _logger.debug("bus counter not updated", exc_info=True)
