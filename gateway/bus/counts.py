"""Where the bus counts its caps: the bytes a principal put on the bus
(``bus.max_bytes_per_principal``), the topic subscriptions an agent holds
(``bus.max_subscriptions_per_agent``) and the requests an agent received and may still
answer (``Bus.reply``; ``MAX_OPEN_REQUESTS`` in all).

``LocalCounts`` counts in this process (the embedded backend: one gateway process per data
dir). On Redis (``gateway.bus.redis_counts``) they are counted in Redis by atomic scripts, so a
cap holds across every process sharing it (replicas, ``symbi serve --workers N``): counted per
process, N processes admitted N times the cap. A backend makes its own (``BusBackend.counts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.bus.message import SecureMessage
from gateway.bus.quotas import SentVolume, check_subscriptions
from gateway.bus.requests import OpenRequests

if TYPE_CHECKING:
    from gateway.bus.backend import BusBackend


@dataclass(frozen=True, slots=True)
class Caps:
    bytes_per_principal: int  # within window_ms
    window_ms: int  # bus.max_age_s: a message's longest life
    subscriptions: int  # per agent
    open_requests: int  # in all (a flood closes the oldest of the agent holding the most)


def stored_size(msg: SecureMessage) -> int:
    """What a message counts against ``bus.max_bytes_per_principal``: what is stored of it."""
    return len(msg.ciphertext) + len(msg.header())


class Counts(Protocol):
    async def deliver(self, inbox: str, msg: SecureMessage, limit: int, charged: str, now_ms: int) -> None:
        """Enqueue ``msg`` (``limit`` entries at most waiting) and count its size against the
        principal ``charged``: ``BusQuotaExceeded`` past its bytes, nothing enqueued nor counted."""

    async def publication(self, who: str, size: int, now_ms: int) -> dict[str, set[str]]:
        """Count a publication's ``size`` against its publisher ``who`` (``BusQuotaExceeded``,
        nothing counted, past its bytes) and read the subscriptions (agent -> patterns)."""

    async def subscribe(self, agent: str, pattern: str, until_ms: int, now_ms: int) -> None:
        """Subscribe at ``now_ms`` until ``until_ms`` (a held one is renewed to it), or
        ``BusQuotaExceeded`` past the agent's live subscriptions (a held one is no new one; an
        expired one, swept or not, is not held)."""

    async def open_add(self, agent: str, request_id: str, requester: str, expires_ms: int) -> None: ...

    async def open_pop(self, agent: str, request_id: str) -> tuple[str, int] | None:
        """(requester, expiry) of an open request of ``agent``, now answered; None if not open."""

    def forget(self, agent: str) -> None:
        """The agent left the bus: what is counted for it here goes (Redis: with its entry)."""

    def sweep(self, now_ms: int) -> None: ...


class LocalCounts:
    def __init__(self, backend: BusBackend, caps: Caps) -> None:
        self.backend = backend
        self.caps = caps
        self.volume = SentVolume(caps.bytes_per_principal, caps.window_ms)
        self.open = OpenRequests(caps.open_requests)

    async def deliver(self, inbox: str, msg: SecureMessage, limit: int, charged: str, now_ms: int) -> None:
        size = stored_size(msg)
        self.volume.check(charged, size, now_ms)
        await self.backend.enqueue(inbox, msg, limit)
        self.volume.add(charged, size, now_ms)

    async def publication(self, who: str, size: int, now_ms: int) -> dict[str, set[str]]:
        self.volume.check(who, size, now_ms)
        subs = await self.backend.subscriptions()
        self.volume.add(who, size, now_ms)
        return subs

    async def subscribe(self, agent: str, pattern: str, until_ms: int, now_ms: int) -> None:
        held = await self.backend.subscriptions_of(agent)
        check_subscriptions(agent, held, pattern, self.caps.subscriptions)
        await self.backend.subscribe(agent, pattern, until_ms)

    async def open_add(self, agent: str, request_id: str, requester: str, expires_ms: int) -> None:
        self.open.add(agent, request_id, requester, expires_ms)

    async def open_pop(self, agent: str, request_id: str) -> tuple[str, int] | None:
        return self.open.pop(agent, request_id)

    def forget(self, agent: str) -> None:
        self.open.forget(agent)

    def sweep(self, now_ms: int) -> None:
        self.volume.sweep(now_ms)
