"""Agents that ended for good leave the bus: an HTTP session's agent (its id never comes back)
when it ends, an agent whose id recurs (a stateless client's: credential and client name) once
it stayed away for ``bus.max_age_s`` after it ended (``KeyRing.park``, ``Bus.expire``).

At once: its private keys and every cache keyed by it, and a message to it is refused
(``BusNoAgent``). Its directory entry (public keys only) goes with its subscriptions and
inboxes, at once if it sent nothing still alive, else once the last message it sent has
expired: the recipients verify that message's signature with it. So the directory outlives
an agent by at most ``bus.max_age_s``, and only an agent that sent something.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.bus.backend import BusBackend
from gateway.bus.crypto import KeyRing
from gateway.bus.receiving import REPLY_SUFFIX

_logger = logging.getLogger("symbi.bus")


class Retirements:
    def __init__(self, backend: BusBackend, ring: KeyRing, uncache: Callable[[str], object]) -> None:
        self.backend = backend
        self.ring = ring
        self._uncache = uncache  # the bus's caches of verified entries
        self.sent_until: dict[str, int] = {}  # live agent -> expiry (ms) of the last message it sent
        self.retiring: dict[str, tuple[str, int]] = {}  # ended agent -> (its name, entry kept until ms)
        self.removing: dict[str, asyncio.Task[None]] = {}  # removals under way, one per agent
        self._leaving: set[asyncio.Task[None]] = set()  # subscriptions and inboxes going (``leave_soon``)

    def sent(self, agent: str, expires_ms: int) -> None:
        if expires_ms > self.sent_until.get(agent, 0):
            self.sent_until[agent] = expires_ms

    def ended(self, agent: str, name: str, now_ms: int) -> bool:
        """Refuse messages to ``agent`` from now on; True if its entry can go now."""
        until = self.sent_until.pop(agent, 0)
        self.retiring[agent] = (name, until)
        return until <= now_ms

    def leave_soon(self, agent: str) -> None:
        """Its entry stays for what it sent, but nothing more reaches it: its subscriptions and
        inboxes go now (a topic kept delivering to an ended agent until what it sent expired,
        up to ``bus.max_age_s``: each publication sealed and stored a copy nobody reads)."""
        try:
            task = asyncio.get_running_loop().create_task(self._leave(agent))
        except RuntimeError:  # no loop: they go with its entry at the expiry sweep
            return
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _leave(self, agent: str) -> None:
        try:
            await self.backend.leave(agent, (agent, agent + REPLY_SUFFIX))
        except Exception as e:  # noqa: BLE001 - they go with its entry at the expiry sweep
            _logger.warning("bus: removing the subscriptions of ended agent %s failed: %s", agent, e)

    async def remove(self, agent: str) -> bool:
        name, _ = self.retiring.get(agent, ("", 0))
        try:
            if not name:  # not known to this run (it ended before a restart): its entry has it
                entry = await self.backend.lookup_keys(agent)
                name = entry.name if entry is not None else ""
            await self.backend.forget_agent(agent, (agent, agent + REPLY_SUFFIX), name)
        except Exception as e:  # noqa: BLE001 - kept, and tried again at the next expiry sweep
            _logger.warning("bus: removing the entry of ended agent %s failed (retried): %s", agent, e)
            return False
        self.retiring.pop(agent, None)
        return True

    def remove_soon(self, agent: str, after: list[asyncio.Task[None]]) -> asyncio.Task[None] | None:
        """Its entry, subscriptions and inboxes go, in a task that first waits for ``after``
        (the publication of its entry: written before it is removed, never after). An id that
        recurs, back meanwhile, publishes its new entry after this task (``Bus.register_soon``)."""
        held = self.removing.get(agent)
        if held is not None:
            return held
        try:
            task = asyncio.get_running_loop().create_task(self._remove(agent, after))
        except RuntimeError:  # no loop: removed by the next expiry sweep
            return None
        self.removing[agent] = task
        task.add_done_callback(lambda _: self.removing.pop(agent, None))
        return task

    async def _remove(self, agent: str, after: list[asyncio.Task[None]]) -> None:
        if after:
            await asyncio.wait(after)
        if await self.remove(agent):
            # a message it sent, received after it ended, verified (and cached) its entry again
            self._uncache(agent)
            if self.ring.local(agent) is None:  # (an id that recurs may be back, with new keys)
                self.ring.forget(agent)
            self.ring.unmark(agent)

    async def sweep(self, now_ms: int) -> None:
        """Entries kept for the messages their agent sent, once those expired, and those whose
        removal failed (tried again): removed (the expiry sweep)."""
        due = [a for a, (_, until) in self.retiring.items() if until <= now_ms]
        tasks = [t for t in (self.remove_soon(a, []) for a in due) if t is not None]
        if tasks:
            await asyncio.wait(tasks)
