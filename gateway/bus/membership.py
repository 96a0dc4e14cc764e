"""The bus's agents: registration (keys made, the directory entry published), the agents that
end (``gateway.bus.retire``) or stay parked for a return, and how a caller and a recipient
are found (by id or name, on this process or another sharing the Redis).

A mixin of ``gateway.bus.core.Bus``, which holds the state it uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio

from gateway.bus.backend import BusBackend
from gateway.bus.counts import Counts
from gateway.bus.crypto import AgentKeys, KeyRing, PublicKeys
from gateway.bus.message import AGENT_RE
from gateway.bus.receiving import Receiver
from gateway.bus.redis_subs import BEAT_S, HOLD_TTL_MS
from gateway.bus.retire import Retirements
from gateway.bus.sealing import Sealer
from gateway.context import Principal
from gateway.errors import ArgumentsInvalid, BusError, BusNoAgent
from gateway.runtime.identity import labelled

_logger = logging.getLogger("symbi.bus")

# parked agents another process held live are looked at again after this long (and again while
# one does): a process that crashed held them (the run before, at start), its heartbeat lapsed
RECHECK_LEFT_S = HOLD_TTL_MS / 1000 + BEAT_S / 2


class Membership:
    backend: BusBackend
    ring: KeyRing
    receiver: Receiver
    sealer: Sealer
    retirements: Retirements
    max_age_ms: int
    _resolve: Callable[[str], str | None] | None
    counts: Counts
    _tasks: set[asyncio.Task[None]]
    _pumps: dict[str, anyio.Lock]
    _published: set[str]  # agents whose directory entry this process wrote
    _names: dict[str, str]  # agent id -> the runtime's name for it
    _configured: dict[str, str]  # configured (hosted) agents' stable ids -> principal
    _left: list[str]  # the start's left-behind agents whose subscriptions could not be removed yet
    _rechecking: set[str]  # parked agents another process held: looked at again, by one task
    _rechecker: asyncio.Task[None] | None

    async def register(self, agent: str, principal: str, name: str | None = None) -> None:
        """Make (or load) the agent's keys and publish its public keys (and its name)."""
        if not AGENT_RE.match(agent):
            raise BusError(f"agent id {agent!r} is not usable on the bus")
        retiring = self.retirements.removing.get(agent)
        if retiring is not None:  # an id used again right after it ended: its old entry goes first
            await asyncio.wait({retiring})
        self.retirements.retiring.pop(agent, None)  # back: its new entry stands
        if name is not None:
            self._names[agent] = name
        _, entry = self.ring.ensure(agent, principal, self._names.get(agent, ""))
        self.receiver.keys.pop(agent, None)
        await self.backend.publish_keys(entry)
        await self.backend.hold(agent)  # live here: a park elsewhere leaves its subscriptions
        self._published.add(agent)

    def register_soon(self, agent: str, principal: str, name: str = "", *, persist: bool = True) -> None:
        """The runtime's on_register hook (synchronous): keys now, the directory entry published
        on the event loop (a send before that registers the caller itself, lazily). Without
        ``persist`` (an id that never comes back) the private keys stay in memory only."""
        if not AGENT_RE.match(agent):
            _logger.warning("bus: agent id %r is not usable on the bus", agent)
            return
        self._names[agent] = name
        _, entry = self.ring.ensure(agent, principal, name, persist=persist)
        self.receiver.keys.pop(agent, None)
        retiring = self.retirements.removing.get(agent)
        if retiring is None:
            self.retirements.retiring.pop(agent, None)  # back (an id that recurs): no longer refused
        try:
            task = asyncio.get_running_loop().create_task(
                self._publish(entry, retiring), name=f"bus-publish:{agent}"
            )
        except RuntimeError:  # no loop (a registry used outside the gateway): published on first use
            return
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if t.cancelled() or t.exception() is not None:
                _logger.warning(
                    "bus: publishing the keys of %s failed (retried on its first bus call): %s",
                    agent,
                    None if t.cancelled() else t.exception(),
                )
            elif self.ring.local(agent) is not None:  # not ended meanwhile
                self._published.add(agent)

        task.add_done_callback(done)

    async def _publish(self, entry: PublicKeys, retiring: asyncio.Task[None] | None) -> None:
        if retiring is not None:  # an id that recurs, back while its old entry is removed: that first
            await asyncio.wait({retiring})
            self.retirements.retiring.pop(entry.agent, None)
        await self.backend.publish_keys(entry)
        await self.backend.hold(entry.agent)

    def park(self, agent: str) -> asyncio.Task[None] | None:
        """An agent whose id recurs (a stateless client's) ended: its keys, entry and inbox stay,
        so it reads what was sent to it if it comes back, for ``bus.max_age_s`` (a message's
        longest life); then it leaves the bus as an agent that ended for good (``expire``).

        Its topic subscriptions go now: while it is away nobody drains its inbox, and each
        publication sealed a copy into it (half its buffer, charged to its principal, then
        refused to every publisher) that it read only if it came back. Back, it subscribes
        again. Returns the task removing them (None: no loop, they expire with their lifetime)."""
        if agent in self._configured:
            return None
        self.ring.park(agent, int(time.time() * 1000))
        try:
            return self._task(self._unsubscribe_parked(agent))
        except RuntimeError:  # no loop: they expire (bus.subscription_ttl_s)
            return None

    async def _unsubscribe_parked(self, agent: str) -> None:
        if self.ring.ended_at(agent) is None:  # back meanwhile (or not parked): its own to keep
            return
        kept = await self._park_subscriptions([agent])
        if kept:  # held by another process: parked once it lets go (or its heartbeat lapses)
            self._recheck(kept)

    async def _park_subscriptions(self, parked: list[str]) -> list[str] | None:
        """Their subscriptions go, but for those another gateway process sharing the Redis
        holds live (a stateless client's agent, on two replicas): returned. None: it failed
        (logged; the caller tries again, or they expire with bus.subscription_ttl_s)."""
        try:
            return await self.backend.unsubscribe_parked(parked)
        except Exception as e:  # noqa: BLE001 - any backend failure: tried again or expires
            who = parked[0] if len(parked) == 1 else f"{len(parked)} agents"
            _logger.warning("bus: removing the subscriptions of parked %s failed: %s", who, e)
            return None

    def end_soon(self, agent: str) -> None:
        """The agent ended for good (its id never comes back): what the bus holds for it goes
        (``gateway.bus.retire``) and a message to it is refused from now on."""
        if agent not in self._configured and self._leave(agent, int(time.time() * 1000)):
            # its entry is written before it is removed, never after
            publishing = [t for t in self._tasks if t.get_name() == f"bus-publish:{agent}"]
            self.retirements.remove_soon(agent, publishing)
        # else kept until what it sent expired (the expiry sweep removes it)

    def _leave(self, agent: str, now_ms: int) -> bool:
        """Its keys and caches go, it is refused; True if its entry can go now."""
        self.ring.forget(agent)
        self.receiver.keys.pop(agent, None)
        self._published.discard(agent)
        self._pumps.pop(agent, None)
        self.receiver.held.pop(agent, None)
        channel = f"agent:{agent}"
        self.sealer.last = {k: v for k, v in self.sealer.last.items() if k[0] != agent and k[1] != channel}
        self.counts.forget(agent)
        if self.retirements.ended(agent, self._names.pop(agent, ""), now_ms):
            return True
        self.retirements.leave_soon(agent)  # its entry stays for what it sent; nothing reaches it
        return False

    async def forget_left_behind(self) -> None:
        """At start: the agents whose id never comes back that an earlier run did not end (it
        crashed, or stopped with sessions open) leave the bus: entry, subscriptions, inboxes
        (the entry once the messages they sent expired, as for an agent that ends now)."""
        now = int(time.time() * 1000)
        for agent, name in self.ring.left_behind:
            # refused at once; what it sent before the restart may still wait for up to
            # bus.max_age_s and is verified with its entry, so the expiry sweep removes that later
            self.retirements.sent(agent, now + self.max_age_ms)
            self.retirements.ended(agent, name, now)
            self.retirements.leave_soon(agent)
        self.ring.left_behind = []
        # and those whose id recurs: kept for a return, from now, without their subscriptions
        # (one round trip for all of them: a run may have left thousands); if the backend
        # cannot be reached, the expiry sweep tries again (``clear_left_behind``)
        self._left = [*self._left, *self.ring.park_unended(now)]
        await self.clear_left_behind()

    async def clear_left_behind(self) -> None:
        """The start's left-behind agents not cleared yet (the backend was unreachable)."""
        left = [a for a in self._left if self.ring.ended_at(a) is not None]  # (not back here)
        if not left:
            self._left = []
            return
        kept = await self._park_subscriptions(left)
        if kept is None:  # the next expiry sweep tries again
            return
        self._left = []
        if kept:  # live elsewhere, or held by the run that crashed until its heartbeat lapses
            self._recheck(kept)

    def _task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of this bus (cancelled by ``stop_tasks``); RuntimeError without a loop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _recheck(self, kept: list[str]) -> None:
        """``kept`` joins the agents looked at again; one task looks at all of them (a stateless
        client parked again and again on two replicas must not start a loop each time)."""
        self._rechecking.update(kept)
        if self._rechecker is None or self._rechecker.done():
            self._rechecker = self._task(self._recheck_left())

    async def _recheck_left(self) -> None:
        """Every ``RECHECK_LEFT_S`` while another process holds some of them and they stay
        parked here (their keys go after bus.max_age_s: then they are not parked)."""
        while self._rechecking:
            await asyncio.sleep(RECHECK_LEFT_S)
            agents = sorted(self._rechecking)  # (the backend parks them PARK_BATCH a script)
            kept = set(await self.recheck_left(agents))
            self._rechecking -= set(agents) - kept  # (those added meanwhile stay)

    async def recheck_left(self, agents: list[str]) -> list[str]:
        """Those still away here: their subscriptions go unless a live process holds them now
        (returned; tried twice: once more after ``BEAT_S`` if the backend failed)."""
        for attempt in range(2):
            still = [a for a in agents if self.ring.ended_at(a) is not None]  # (not back here)
            if not still:
                return []
            kept = await self._park_subscriptions(still)
            if kept is not None:
                return kept
            if attempt == 0:
                await asyncio.sleep(BEAT_S)
        # failed twice: all still parked are looked at again (an outage must not end the
        # re-check: one the other process then dropped kept its subscriptions)
        return [a for a in agents if self.ring.ended_at(a) is not None]

    async def stop_tasks(self) -> None:
        """Before the backend closes: the parks and the re-check pending are cancelled."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def footprint(self) -> dict[str, int]:
        """What the bus holds per agent, for ``/api/state`` (freed when the agent ends)."""
        return {
            **self.ring.footprint(),
            **self.backend.footprint(),
            "bus_agent_names": len(self._names),
            "bus_published": len(self._published),
            "bus_chains": len(self.sealer.last),
            "bus_reply_pumps": len(self._pumps),
            "bus_sender_keys": len(self.receiver.keys),
            "bus_senders_live": len(self.retirements.sent_until),
            "bus_ended_kept": len(self.retirements.retiring),
        }

    def preregister(self, agent: str, principal: str, name: str) -> None:
        """A configured agent that may not be running (a hosted agent's stable id): its keys now,
        its directory entry at start (``publish_configured``) or on the first message to it, so
        what is sent to it waits in its inbox for its next run."""
        if not AGENT_RE.match(agent):
            raise BusError(f"agent id {agent!r} is not usable on the bus")
        self._names[agent] = name
        self._configured[agent] = principal
        self.ring.ensure(agent, principal, name)

    async def publish_configured(self) -> None:
        for agent, principal in self._configured.items():
            if agent not in self._published:
                await self.register(agent, principal)

    async def ensure_agent(self, principal: Principal) -> str:
        """The caller's agent id, registered on the bus (keys made) if it was not yet."""
        return (await self._me(principal)).agent

    async def _me(self, principal: Principal) -> AgentKeys:
        agent = principal.agent
        if agent is None:
            raise BusNoAgent("the bus is for agents: this session has no agent id")
        keys = self.ring.local(agent)
        # keyed by the qualified principal: a JWT sub=alice is not the API key alice
        if keys is None or keys.principal != principal.qualified or agent not in self._published:
            await self.register(agent, principal.qualified)
            keys = self.ring.local(agent)
            assert keys is not None
        return keys

    async def _peer(self, to: Any) -> tuple[str, str]:
        """(agent id, qualified principal) of a recipient given by id or name; BusNoAgent if unknown."""
        if not isinstance(to, str) or not to:
            raise ArgumentsInvalid("to must be an agent id or name")
        agent = (self._resolve(to) if self._resolve else None) or to
        if agent in self.retirements.retiring:
            raise BusNoAgent(f"agent {to!r} has ended")
        if agent in self._configured and agent not in self._published:
            await self.register(agent, self._configured[agent])
        keys = await self.receiver.sender_keys(agent) if AGENT_RE.match(agent) else "unknown sender"
        if keys == "unknown sender":
            # a name registered by another gateway process (shared Redis): the HMAC binds it
            named = await self.backend.lookup_name(to)
            if named is not None and AGENT_RE.match(named):
                found = await self.receiver.sender_keys(named)
                # and the name's label is its principal's (a name of one namespace never
                # resolves to another's agent, whichever process registered it last)
                if not isinstance(found, str) and found[3] == to and labelled(to, found[2]):
                    return named, found[2]
            raise BusNoAgent(f"no agent {to!r} is known to the bus")
        if isinstance(keys, str):
            raise BusError(f"agent {to!r}: {keys}")
        return agent, keys[2]

    def _kept(self, agent: str, ttl_ms: int | None) -> int | None:
        """A message to an ended agent whose id recurs expires when its keys go (``park``), so
        it stays readable for as long as it lives if the agent comes back."""
        ended = self.ring.ended_at(agent)
        if ended is None:
            return ttl_ms
        left = ended + self.max_age_ms - int(time.time() * 1000)
        if left <= 0:  # its keys go at the next expiry sweep
            raise BusNoAgent(f"agent {agent!r} has ended")
        return left if ttl_ms is None else min(ttl_ms, left)
