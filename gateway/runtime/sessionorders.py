"""Operators' actions on session agents that live in another process (``[state] redis_url``).

Under ``symbi serve --workers N`` or replicas on one Redis, a session agent lives in the
process its session reached; an admin request may reach any other. Each process writes the
ids of the session agents it holds to Redis (``gateway.state.sessionboard``) when they change
(at once when a session makes a new one; what did not change is not written again), says it
is alive every ``RENEW_S``, and takes the orders other processes left for it, when woken by
the one who left them (pub/sub) or at the next renewal: the admin API's ``pass_session_action`` (``gateway.server.operations``)
finds the holder there and leaves the order (``gateway.runtime.orders.Order`` naming the agent
id) in the holder's inbox; the holder carries it out as a local action, the admin who asked
on its audit record. A process that cannot reach Redis keeps retrying; its records expire
(``ttl_ms``) and an action asked meanwhile is refused (503 where Redis cannot be reached, 404
where no process holds the agent), never dropped silently. A resume taken here writes its
principal's clear to Redis before it acts, as the operator's own does (``clear_first``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from gateway.errors import StateUnavailable
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.orders import OPERATOR_EVENTS, ORDER_TTL_S, Order, act, parse_order
from gateway.state.leases import RENEW_S, redis_now

if TYPE_CHECKING:
    from gateway.events import EventSink
    from gateway.runtime.agents import Agent
    from gateway.runtime.core import AgentRuntime
    from gateway.state.sessionboard import SessionBoard

_logger = logging.getLogger("symbi.runtime.sessionorders")
_REDIS_ERRORS = (RedisError, OSError)


class SessionAgents:
    """This process's session agents on the shared board, and the orders left for them."""

    def __init__(self, runtime: AgentRuntime, events: EventSink, board: SessionBoard) -> None:
        self.runtime = runtime
        self.events = events
        self.board = board
        self.owner = board.owner
        self._published: dict[str, dict[str, Any]] = {}  # as last written
        self._full_at = 0.0  # (monotonic) when every record is written again
        self._poke: anyio.Event | None = None  # made on the loop, by ``run``
        runtime.agents.on_register.append(self._registered)

    def _registered(self, agent: Agent) -> None:
        if not agent.hosted:
            self._wake()  # a new session agent: on the board now, not at the next renewal

    def _wake(self) -> None:
        if self._poke is not None:
            self._poke.set()

    # -- the admin surface (another process's session agent) ------------------------------------

    async def pass_order(
        self, agent_id: str, action: str, who: str, reason: str
    ) -> dict[str, dict[str, Any]]:
        """Leave ``action`` on session agent ``agent_id`` for every other process holding it:
        those processes and their records ({}: none holds it, nothing is left). Raises
        ``RedisError``/``OSError``: the caller refuses (fail closed, never dropped silently)."""
        holders = {o: d for o, d in (await self.board.holders(agent_id)).items() if o != self.owner}
        if holders:
            at = await redis_now(self.board.redis)  # the holder judges its age on Redis's clock too
            order = Order(action=action, by=who, reason=reason, via=self.owner, at=at, agent=agent_id)
            await self.board.order(sorted(holders), order.dumps(), ORDER_TTL_S)
        return holders

    # -- the background task ------------------------------------------------------------------

    async def run(self) -> None:
        self._poke = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._listen)
            while True:
                try:
                    await self._renew()
                    await self._take_orders()
                except _REDIS_ERRORS as e:  # retried at the next turn; the records expire meanwhile
                    _logger.warning("the session agents' records could not be written or read: %s", e)
                except Exception:  # a value of the wrong shape on Redis (or a bug) ended this task
                    # group and the gateway with it; orders are taken at the next pass instead
                    _logger.exception("the session agents' records or orders could not be handled")
                with anyio.move_on_after(RENEW_S):
                    await self._poke.wait()
                self._poke = anyio.Event()

    async def _listen(self) -> None:
        """Orders taken as soon as they are left; the renewal's poll is the fallback."""
        while True:
            try:
                await self.board.wakeups(self._wake)
            except _REDIS_ERRORS as e:
                _logger.debug("the session orders' wake-up channel was lost: %s", e)
            except Exception:  # never the gateway's end: the renewal's poll takes the orders
                # (not redundant with ``_redis_only``: the pub/sub's close and ``wake`` are outside it)
                _logger.exception("the session orders' wake-up channel failed")
            await anyio.sleep(RENEW_S)

    def _live(self) -> dict[str, dict[str, Any]]:
        return {
            a.id: {"name": a.name, "state": a.state.value, "principal": a.principal}
            for a in self.runtime.agents
            if not a.hosted and a.state is not AgentState.TERMINATED
        }

    async def _renew(self) -> None:
        """Write the records that changed (all of them each third of their keys' expiry, or
        when Redis lost this process), remove the ended ones, renew this process's liveness."""
        live = self._live()
        full = time.monotonic() >= self._full_at
        changed = live if full else {i: d for i, d in live.items() if self._published.get(i) != d}
        next_full, self._full_at = self._full_at, 0.0  # a write failing part-way: a full one next
        if not await self.board.publish(changed, self._published.keys() - live.keys()) and not full:
            await self.board.publish(live, ())  # it had lapsed: its records may be gone too
            full = True
        self._published = live
        self._full_at = time.monotonic() + self.board.record_ttl_ms / 3000 if full else next_full

    async def _take_orders(self) -> None:
        raw, now = await self.board.take_orders()
        for r in raw:
            try:  # (parsed in here: one that raised lost the rest of the batch, taken off Redis)
                if (order := parse_order(r, now)) is not None:
                    await self._carry_out(order)
            except Exception:  # taken off Redis: the rest are carried out, and this task goes on
                # (the audit log broken with on_failure = "deny" raised AuditError here: the task
                # ended, the orders taken with it lost, and the gateway went down; session 42)
                _logger.exception("an agent order failed: %.200r", r)

    def _refused(self, order: Order, why: str, agent: str | None = None) -> None:
        """``order`` refused, on the record (naming ``agent`` when it is one here)."""
        doc = {"agent": order.agent, "by": order.by, "reason": order.reason, "via": order.via}
        doc["result"] = f"refused: {why}"
        self.events.emit(OPERATOR_EVENTS[order.action], doc, principal=order.by, agent=agent)

    async def _carry_out(self, order: Order) -> None:
        """One order left for this process: carried out, or refused on the record."""
        agent = self.runtime.agents.get(order.agent) if order.agent else None
        if agent is None or agent.hosted:  # ended since, or not a session agent: said, not done
            self._refused(order, "no session agent with this id in this process")
            return
        try:  # a resume's clear on Redis first, as the operator's own (``clear_first``)
            cleared = order.action == "resume" and await self.runtime.clear_first(agent)
        except StateUnavailable as e:  # nothing cleared or resumed: said, not done
            self._refused(order, e.message, agent.id)
            _logger.warning("agent %s: resume from %s refused: %s", agent.id, order.by, e.message)
            return
        _, result = act(self.runtime, self.events, agent, order, cleared=cleared)
        _logger.info("agent %s: %s from %s via %s: %s", agent.id, order.action, order.by, order.via, result)
