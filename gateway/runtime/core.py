"""``AgentRuntime``: the one runtime component the gateway assembles.

It owns the agent registry, the scheduler, the per-agent budgets and accounting, the
upstream circuit breakers and the recent errors, and turns what happens to calls into
lifecycle transitions:

- a call starts: Ready -> Running ("task assigned"); the last call ends: Running -> Ready;
- a suspended agent's call is refused (``AgentSuspended``) before any other step runs;
- ``suspend_after_denials`` policy denials within ``denial_window_s``, a policy decision with
  the ``suspend_agent`` condition, or a budget breach: Running -> Suspended. The denials are
  counted per principal, over all its sessions: a new session is no fresh start, and while the
  window holds that many, each further denial suspends the agent it came from;
- an operator resumes (Suspended -> Running "policy cleared", then Ready when idle) or
  terminates (Suspended/Ready/Failed -> Terminated; a Running agent ends when its calls do).

A session agent's suspension is its principal's (``gateway.runtime.holds``): from then on every
session agent of that principal, in any session (on every replica with ``[state] redis_url``),
is suspended at its next call with the same reason, until an operator resumes one or the principal.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from gateway.config.model import Config
from gateway.errors import (
    AgentError,
    AgentSuspended,
    AgentTerminated,
    AuditError,
    GatewayError,
    HoldsFull,
    InvalidTransition,
    StateUnavailable,
)
from gateway.events import Event, EventSink
from gateway.runtime.agents import Agent, AgentRegistry
from gateway.runtime.breaker import Breakers
from gateway.runtime.ended import EndedSessions
from gateway.runtime.holds import REASON_MAX, Hold, PrincipalHolds
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.resources import ResourceLimits, ResourcePool, Usage
from gateway.runtime.scheduler import Scheduler

_logger = logging.getLogger("symbi.runtime")

RECENT_ERRORS = 50


class AgentRuntime:
    def __init__(
        self,
        config: Config,
        events: EventSink,
        *,
        key: bytes | None = None,
        ended: EndedSessions | None = None,
        holds: PrincipalHolds | None = None,
    ) -> None:
        rt = config.runtime
        self.config = config
        self.events = events
        self.agents = AgentRegistry(
            events,
            key=key,
            max_agents=rt.max_concurrent_agents,
            max_per_principal=rt.max_agents_per_principal,
            reserved=sum(1 for ac in config.agents.values() if ac.enabled),
            default_priority=rt.default_priority,
            ended=ended,
        )
        self.scheduler = Scheduler(
            max_in_flight=rt.max_in_flight,
            queue_limit=rt.queue_limit,
            max_in_flight_per_principal=rt.max_in_flight_per_principal,
            queue_limit_per_principal=rt.queue_limit_per_principal,
            aging_s=rt.aging_s,
        )
        self.default_limits = ResourceLimits.from_config(rt.resources)
        self.pool = ResourcePool(rt.pool_slots, rt.pool_slot_cpu, rt.pool_slot_memory_mb, rt.allocation)
        self.breakers = Breakers(rt.breaker.failures, rt.breaker.reset_s, events)
        self.limits: dict[str, ResourceLimits] = {}  # per agent, when not the default (hosted agents)
        self.usage: dict[str, Usage] = {}
        self._denials: dict[str, deque[float]] = {}  # per qualified principal: its denials' times
        self._terminating: dict[str, str] = {}  # Running agents to end when their calls do -> reason
        self.recent_errors: deque[dict[str, Any]] = deque(maxlen=RECENT_ERRORS)
        self.on_terminate: list[Callable[[Agent], None]] = []  # hosted agents stop their process
        self.started = time.time()
        self.agents.on_unregister.append(self._forget)
        # suspended principals: a session agent's suspension holds every session of its principal
        self.holds = holds if holds is not None else PrincipalHolds()
        self.agents.on_state.append(self._state_changed)
        self.holds.on_released.append(self._released)
        self.holds.on_unshared.append(self._unshared)

    @property
    def message_buffer_size(self) -> int:
        """runtime.message_buffer_size: each agent's message buffer on the agent bus."""
        return self.config.runtime.message_buffer_size

    # -- budgets ------------------------------------------------------------------------------

    def limits_of(self, agent: Agent) -> ResourceLimits:
        return self.limits.get(agent.id, self.default_limits)

    def usage_of(self, agent: Agent) -> Usage:
        u = self.usage.get(agent.id)
        if u is None:
            u = self.usage[agent.id] = Usage()
        return u

    # -- calls ----------------------------------------------------------------------------------

    def begin(self, agent: Agent, what: str) -> None:
        """A task for ``agent`` starts, or is refused when the agent may not work now."""
        agent.last_seen = time.monotonic()
        if agent.state is AgentState.SUSPENDED:  # suspended whatever the shared state says
            clearing: list[str] = []
            with contextlib.suppress(StateUnavailable):
                clearing = self._clearing(agent, self._held(agent))
            raise AgentSuspended(
                f"agent {agent.name} is suspended", reasons=[agent.reason or "suspended", *clearing]
            )
        if agent.state is AgentState.TERMINATED or self.terminating(agent):
            raise AgentTerminated(
                f"agent {agent.name} has been terminated", reasons=[agent.reason or "terminated"]
            )
        if agent.state not in (AgentState.READY, AgentState.RUNNING):
            raise AgentError(f"agent {agent.name} is {agent.state.value}: it cannot take tasks")
        hold = self._held(agent)  # StateUnavailable before anything is counted
        agent.in_flight += 1
        agent.calls += 1
        if agent.state is AgentState.READY:
            # per call: an agent.state audit event (issue 13: one per transition), also counted
            self.agents.transition(agent, AgentState.RUNNING, f"task assigned: {what}")
        if hold is not None and agent.suspend_pending is None:
            agent.suspend_pending = held_reason(hold)
        if agent.suspend_pending is not None:
            reason, agent.suspend_pending = agent.suspend_pending, None
            self._suspend_running(agent, reason)
            self.end(agent)
            raise AgentSuspended(
                f"agent {agent.name} is suspended", reasons=[reason, *self._clearing(agent, hold)]
            )

    def refused_now(self, agent: Agent) -> GatewayError | None:
        """Why a call of ``agent`` that began earlier (and waited for a scheduler slot) may not
        reach its upstream now: the agent was suspended or is being terminated meanwhile, or its
        principal was suspended. None: it may. The call is not counted again (``begin`` did)."""
        if agent.state is AgentState.SUSPENDED:
            return AgentSuspended(f"agent {agent.name} is suspended", reasons=[agent.reason or "suspended"])
        if agent.state is AgentState.TERMINATED or self.terminating(agent):
            return AgentTerminated(
                f"agent {agent.name} has been terminated", reasons=[agent.reason or "terminated"]
            )
        hold = self._held(agent)
        if hold is not None:
            if agent.state is AgentState.RUNNING:
                self._suspend_running(agent, held_reason(hold))
            return AgentSuspended(
                f"agent {agent.name} is suspended", reasons=[held_reason(hold), *self._clearing(agent, hold)]
            )
        return None

    def _held(self, agent: Agent) -> Hold | None:
        """The hold of ``agent``'s principal, for a session agent (``StateUnavailable`` when
        the shared list has not been confirmed lately)."""
        return self.holds.get(agent.owner) if not agent.hosted and agent.owner else None

    def _clearing(self, agent: Agent, hold: Hold | None) -> list[str]:
        """How an operator clears a session agent's suspension (said with each refusal)."""
        if agent.hosted or not agent.owner:
            return []
        who = agent.owner
        if hold is None:
            return [f"an operator resumes it: symbi agents resume {agent.id}"]
        return [
            f"principal {who} is suspended (since {_when(hold.at)}): every session of it is refused",
            f"an operator clears it: symbi agents resume --principal {who}",
        ]

    def end(self, agent: Agent, elapsed_s: float | None = None, result_bytes: int | None = None) -> None:
        agent.in_flight = max(agent.in_flight - 1, 0)
        agent.last_seen = time.monotonic()
        if elapsed_s is not None:
            u = self.usage_of(agent)
            u.calls += 1
            u.busy_s += elapsed_s
            u.longest_call_s = max(u.longest_call_s, elapsed_s)
            u.bytes_out += result_bytes or 0
        try:
            if agent.in_flight == 0 and agent.state is AgentState.RUNNING and not agent.hosted_busy:
                self.agents.transition(agent, AgentState.READY, "task complete")
        finally:  # its record refused (a broken log), the state moved: a closed session's agent ends
            if agent.id in self._terminating and agent.state is AgentState.READY and agent.in_flight == 0:
                self._terminate_acted(agent, self._terminating[agent.id])

    def note_error(self, agent: Agent | None, error: BaseException, target: str) -> None:
        """A failed or denied call: counted toward suspension when it is a policy denial of this
        agent's own doing. Not a rate limit: its count is the principal's, which every agent of
        that principal shares, so one agent's calls got a sibling suspended. A denial is the
        principal's too (its window is): counted per session, a client that reconnected after
        every ``suspend_after_denials - 1`` denials was never suspended."""
        code = error.code if isinstance(error, GatewayError) else "internal_error"
        self.recent_errors.append(
            {
                "time": time.time(),
                "agent": agent.id if agent else None,
                "code": code,
                "target": target,
                "type": type(error).__name__,
            }
        )
        from gateway.errors import PolicyDenied, PolicyError, RateLimited

        if (
            agent is None
            or not isinstance(error, PolicyDenied)
            or isinstance(error, PolicyError | RateLimited)
        ):
            return
        rt = self.config.runtime
        now = time.monotonic()
        window = self._denials.setdefault(_principal_of(agent), deque())
        window.append(now)
        while window and window[0] <= now - rt.denial_window_s:
            window.popleft()
        if len(window) >= rt.suspend_after_denials and agent.state is AgentState.RUNNING:
            self._suspend_running(
                agent,
                f"policy violation: {rt.suspend_after_denials} denials within {rt.denial_window_s:g} s "
                "(runtime.suspend_after_denials)",
            )

    # -- operator and policy actions ----------------------------------------------------------

    def suspend(self, agent: Agent, reason: str) -> str:
        """Suspend now (Running) or at its next task (Ready). Returns what happened."""
        if agent.state is AgentState.RUNNING:
            self._suspend_running(agent, reason)
            return "suspended"
        if agent.state is AgentState.READY:
            agent.suspend_pending = reason  # the seed has no Ready -> Suspended: held for the next task
            pending = {"agent": agent.id, "reason": reason}
            try:
                self.events.emit(
                    Event.AGENT_SUSPEND_PENDING, pending, principal=agent.principal, agent=agent.id
                )
            finally:  # its principal's other sessions: refused from now on, also when the log
                self._hold(agent, reason)  # refused the record (as ``transition``'s hooks)
            return "pending"
        if agent.state is AgentState.SUSPENDED:
            return "already suspended"
        raise InvalidTransition(f"agent {agent.name} is {agent.state.value}: it cannot be suspended")

    def _suspend_running(self, agent: Agent, reason: str) -> None:
        self.agents.transition(agent, AgentState.SUSPENDED, reason)

    def resume(self, agent: Agent, reason: str, *, cleared: bool = False) -> str:
        """An operator resumes ``agent``. A session agent's suspension is its principal's: its
        principal's hold is cleared and every suspended session agent of it resumed too.
        ``cleared``: that hold's clear is on Redis already (``PrincipalHolds.clear``, decided
        by ``clears_hold`` before it was written): done whatever ``agent`` became meanwhile. A
        409 then (another replica's clear read first resumed it) was a refusal after the hold
        had been lifted everywhere (session 42)."""
        if not agent.hosted and agent.owner and (cleared or self.clears_hold(agent)):
            pending = agent.state is AgentState.READY and agent.suspend_pending is not None
            was_held = self.holds.drop(agent.owner) is not None
            resumed = self.release(agent.owner, reason)
            if agent.id in resumed:
                said = "pending suspension cleared" if pending else "resumed"
                more = len(resumed) - 1
                return f"{said} (and {more} more of {agent.owner})" if more else said
            if resumed or was_held or cleared:
                return f"the suspension of principal {agent.owner} cleared"
        if agent.suspend_pending is not None and agent.state is AgentState.READY:
            agent.suspend_pending = None
            return "pending suspension cleared"
        if agent.state is not AgentState.SUSPENDED:
            raise InvalidTransition(f"agent {agent.name} is {agent.state.value}, not Suspended")
        self._resume_one(agent, reason)
        return "resumed"

    async def clear_first(self, agent: Agent) -> bool:
        """Before an operator's resume of ``agent`` (here, or an order passed to this process):
        its principal's hold cleared on Redis first (``PrincipalHolds.clear``) when the resume
        would clear one: whether it was written (then ``resume(cleared=True)``). Raises
        ``StateUnavailable`` when Redis does not take it: nothing is cleared or resumed. A clear
        queued in memory (``drop``) was lost if the process stopped before writing it (session 42)."""
        if self.holds.board is None or agent.hosted or not agent.owner or not self.clears_hold(agent):
            return False
        await self.holds.clear(agent.owner, self.config.state.timeout_s, here=False)
        return True

    def clears_hold(self, agent: Agent) -> bool:
        """Whether resuming session agent ``agent`` clears its principal's hold: the principal is
        held here, or an agent of it is suspended. Checked before the clear is written: a resume
        refused (409: ``agent`` Running, nothing held) had already queued a clear for Redis,
        lifting a hold another replica had just made (session 41)."""
        if self.holds.holding(agent.owner):
            return True
        return any(
            not a.hosted
            and a.owner == agent.owner
            and (
                a.state is AgentState.SUSPENDED
                or (a.state is AgentState.READY and a.suspend_pending is not None)
            )
            for a in self.agents
        )

    def _resume_one(self, agent: Agent, reason: str) -> None:
        self._denials.pop(_principal_of(agent), None)  # an operator cleared it: a fresh count
        self.agents.transition(agent, AgentState.RUNNING, f"policy cleared: {reason}")
        if agent.in_flight == 0 and not agent.hosted_busy:
            self.agents.transition(agent, AgentState.READY, "task complete (nothing in flight)")

    def release(self, principal: str, reason: str) -> list[str]:
        """Resume every session agent of ``principal`` here (its hold was cleared): the ids
        of those that were suspended; a pending suspension is dropped as well."""
        self._denials.pop(principal, None)
        resumed = []
        for agent in self.agents:
            if agent.hosted or agent.owner != principal:
                continue
            if agent.state is AgentState.READY and agent.suspend_pending is not None:
                agent.suspend_pending = None
                resumed.append(agent.id)
            elif agent.state is AgentState.SUSPENDED:
                self._resume_one(agent, reason)
                resumed.append(agent.id)
        return resumed

    def suspend_principal(self, principal: str, reason: str, by: str) -> bool:
        """An operator suspends ``principal`` (qualified): every session agent of it is refused
        from its next call. Whether it was not suspended already."""
        new = self.holds.add(Hold(principal, reason[:REASON_MAX], by=by, at=time.time()))
        if new:
            self.events.emit(
                Event.PRINCIPAL_SUSPENDED,
                {"principal": principal, "reason": reason, "by": by},
                principal=principal,
            )
        return new

    def _hold(self, agent: Agent, reason: str) -> None:
        """``agent``'s suspension (now or pending) holds its principal, when it is a session's."""
        if agent.hosted or not agent.owner:
            return
        try:
            new = self.holds.add(Hold(agent.owner, reason[:REASON_MAX], agent=agent.id, at=time.time()))
        except HoldsFull as e:  # the agent's own suspension stands; its principal's is refused
            _logger.error(
                "agent %s suspended, its principal %s not held: %s", agent.id, agent.owner, e.message
            )
            self.events.emit(
                Event.PRINCIPAL_HOLD_REFUSED,
                {"principal": agent.owner, "agent": agent.id, "reason": reason, "in_force": "nowhere"},
                principal=agent.principal,
                agent=agent.id,
            )
            return
        if new:
            self.events.emit(
                Event.PRINCIPAL_SUSPENDED,
                {"principal": agent.owner, "reason": reason, "agent": agent.id},
                principal=agent.principal,
                agent=agent.id,
            )

    def _state_changed(self, agent: Agent, src: AgentState, to: AgentState) -> None:
        if to is AgentState.SUSPENDED:
            self._hold(agent, agent.reason)

    def _unshared(self, hold: Hold) -> None:
        """Redis refused ``hold`` (``limit`` principals held there): in force here only."""
        self.events.emit(
            Event.PRINCIPAL_HOLD_REFUSED,
            {
                "principal": hold.principal,
                "agent": hold.agent,
                "by": hold.by,
                "in_force": "this process only",
            },
            principal=hold.principal,
            agent=hold.agent or None,
        )

    def _released(self, principal: str, why: str) -> None:
        """Another process cleared ``principal``'s hold: its session agents here resume."""
        resumed = self.release(principal, f"principal {principal}: {why}")
        if resumed:
            _logger.info("principal %s: %s; %d agent(s) resumed here", principal, why, len(resumed))

    def terminate(self, agent: Agent, reason: str) -> str:
        """An operator ends ``agent``: its session gets no new agent afterwards."""
        self.agents.end_session(agent, reason)
        for hook in self.on_terminate:
            hook(agent)  # a hosted agent's process is stopped; its run ends through end()
        if agent.state is AgentState.RUNNING:
            self._terminating[agent.id] = reason
            return "terminating (after its calls in flight)"
        if agent.state is AgentState.TERMINATED:
            return "already terminated"
        if agent.state is AgentState.INITIALIZING:
            raise InvalidTransition(f"agent {agent.name} is Initializing: wait for Ready or Failed")
        self._terminate_now(agent, reason)
        return "terminated"

    def terminating(self, agent: Agent) -> bool:
        """Whether ``agent``'s run is being ended by a terminate (once its calls in flight end)."""
        return agent.id in self._terminating

    def close_session(self, session: str, reason: str) -> int:
        """The client's session ``session`` ended: its agents end too (when their calls do).
        Else an HTTP session's agent stayed live until ``agent_idle_timeout_s``, and a client
        that opens and closes sessions would fill ``max_concurrent_agents``."""
        ended = 0
        for agent in self.agents.of_session(session):
            if agent.state is AgentState.RUNNING:
                self._terminating[agent.id] = reason
            elif agent.state in (AgentState.READY, AgentState.SUSPENDED, AgentState.FAILED):
                self._terminate_acted(agent, reason)
            else:
                continue
            ended += 1
        return ended

    def _terminate_now(self, agent: Agent, reason: str) -> None:
        self._terminating.pop(agent.id, None)
        self.agents.transition(agent, AgentState.TERMINATED, reason)

    def _terminate_acted(self, agent: Agent, reason: str) -> None:
        """``_terminate_now`` with no caller to refuse (sweep, closed session): a refused record is logged."""
        try:
            self._terminate_now(agent, reason)
        except AuditError as e:
            _logger.error("agent %s terminated, its record refused: %s", agent.id, e.message)

    def _forget(self, agent: Agent) -> None:
        self.usage.pop(agent.id, None)
        self.limits.pop(agent.id, None)
        self._terminating.pop(agent.id, None)  # a hosted agent's next run has the same id
        self.pool.release(agent.id)

    # -- the sweep (runtime.gc_interval_ms) ----------------------------------------------------

    def sweep(self, now: float | None = None, batch: int | None = None) -> int:
        """Look at up to ``runtime.gc_batch`` agents: end idle sessions, drop Terminated ones."""
        now = time.monotonic() if now is None else now
        rt = self.config.runtime
        removed = 0
        for agent in self.agents.batch(batch or rt.gc_batch):
            if agent.state is AgentState.TERMINATED and not agent.hosted:  # a hosted run: till the next
                self.agents.remove(agent)
                removed += 1
            elif not agent.hosted and agent.state is AgentState.READY and agent.in_flight == 0:
                if now - agent.last_seen > rt.agent_idle_timeout_s:
                    self._terminate_acted(agent, f"shutdown: idle for {rt.agent_idle_timeout_s:g} s")
        expired = now - rt.denial_window_s
        for who in [who for who, window in self._denials.items() if not window or window[-1] <= expired]:
            del self._denials[who]  # no denial left in its window: its principal's sessions are gone
        return removed

    async def run(self) -> None:
        """Started with the gateway: size the worker pool, then sweep every gc_interval_ms."""
        # runtime.scheduler_threads: the threads for blocking work (policy evaluation, signing,
        # sandbox starts), which all go through anyio's default thread limiter
        anyio.to_thread.current_default_thread_limiter().total_tokens = self.config.runtime.scheduler_threads
        interval = self.config.runtime.gc_interval_ms / 1000.0
        while True:
            await anyio.sleep(interval)
            try:
                self.sweep()
            except Exception:
                _logger.exception("agent sweep failed")


def held_reason(hold: Hold) -> str:
    """The reason a session agent of a held principal is suspended with."""
    return f"principal {hold.principal} is suspended: {hold.reason}"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at else "unknown"


def _principal_of(agent: Agent) -> str:
    """The qualified principal whose denials ``agent``'s count toward (its own id for an
    agent made without one)."""
    return agent.owner or agent.id
