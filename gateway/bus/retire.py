"""Agents that ended for good (an HTTP session's agent: its id never comes back) leave the bus.

At once: its private keys and every cache keyed by it, and a message to it is refused
(``BusNoAgent``). Its directory entry (public keys only) goes with its subscriptions and
inboxes, at once if it sent nothing still alive, else once the last message it sent has
expired: the recipients verify that message's signature with it. So the directory outlives
an agent by at most ``bus.max_age_s``, and only an agent that sent something.
"""

from __future__ import annotations

import logging

from gateway.bus.backend import BusBackend
from gateway.bus.receiving import REPLY_SUFFIX

_logger = logging.getLogger("symbi.bus")


class Retirements:
    def __init__(self, backend: BusBackend) -> None:
        self.backend = backend
        self.sent_until: dict[str, int] = {}  # live agent -> expiry (ms) of the last message it sent
        self.retiring: dict[str, tuple[str, int]] = {}  # ended agent -> (its name, entry kept until ms)

    def sent(self, agent: str, expires_ms: int) -> None:
        if expires_ms > self.sent_until.get(agent, 0):
            self.sent_until[agent] = expires_ms

    def ended(self, agent: str, name: str, now_ms: int) -> bool:
        """Refuse messages to ``agent`` from now on; True if its entry can go now."""
        until = self.sent_until.pop(agent, 0)
        self.retiring[agent] = (name, until)
        return until <= now_ms

    async def remove(self, agent: str) -> bool:
        name, _ = self.retiring.get(agent, ("", 0))
        try:
            await self.backend.forget_agent(agent, (agent, agent + REPLY_SUFFIX), name)
        except Exception as e:  # noqa: BLE001 - kept, and tried again at the next expiry sweep
            _logger.warning("bus: removing the entry of ended agent %s failed (retried): %s", agent, e)
            return False
        self.retiring.pop(agent, None)
        return True

    async def sweep(self, now_ms: int) -> list[str]:
        """Entries kept for the messages their agent sent, once those expired (the expiry sweep)."""
        return [
            a for a, (_, until) in list(self.retiring.items()) if until <= now_ms and await self.remove(a)
        ]
