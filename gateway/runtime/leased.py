"""Hosted agents under shared state: each runs in the one gateway process holding its lease.

With ``[state] redis_url`` every replica (or ``symbi serve --workers N`` worker) has the same
``[agents.*]``; without a lease each ran every hosted agent, N copies under one identity with
N budgets. Here each process tries every ``RENEW_S`` to take each agent's lease
(``gateway.state.leases``); the holder runs the agent's supervisor (``HostedAgents._supervise``:
its start mode, restarts, escalation) and keeps the lease for as long as it lives, also when
the supervisor has nothing more to run, so an agent that ran once is not run again elsewhere.

Fail closed: a holder that cannot renew (Redis unreachable, or the lease no longer holds its
token) stops its agent's run before the lease could expire (``STOP_MARGIN_S`` ahead of it), and
says so in the log and the audit (``agent.lease_lost``); then it tries to take the lease again
like any other process. An operator's suspend / resume / terminate answered by a process that
does not hold the lease is passed to the holder as an order (``gateway.runtime.orders``), which
the holder carries out after its next renewal. A holder that dies leaves its lease to expire: another process takes
it within ``LEASE_TTL_MS`` + ``RENEW_S``. On stop the holder releases it once its run has ended.
A holder whose audit log cannot record lets the lease go to a replica whose log works: at once
when its runs are refused; for a live run, once its renewals have seen the log broken for
``AUDIT_RETRY_S`` (5-9 s after the break; ``_letting_go``). Either way it waits ``RENEW_S``
before it tries to take that lease again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from gateway.config.sections import AgentConfig
from gateway.errors import AuditError, InvalidTransition
from gateway.events import Event, record_acted
from gateway.runtime.hosted import AUDIT_RETRY_S
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.marks import Clock, Mark, dated, on_clock, voids
from gateway.runtime.orders import OPERATOR_EVENTS, ORDER_TTL_S, Order, act, parse_order
from gateway.state.leases import RENEW_S, RETRY_S, STOP_MARGIN_S, Lease, LeaseBoard

if TYPE_CHECKING:
    from gateway.runtime.agents import Agent
    from gateway.runtime.hosted import HostedAgents

_logger = logging.getLogger("symbi.runtime.leased")
_REDIS_ERRORS = (RedisError, OSError)
CLOCK_RTT_S = 0.5  # a reading of Redis's clock that took longer does not replace the last one


class LeasedAgents:
    """Runs ``hosted``'s supervisors for the agents whose lease this process holds."""

    def __init__(self, hosted: HostedAgents, board: LeaseBoard) -> None:
        self.hosted = hosted
        self.board = board
        self.held: set[str] = set()
        self._poke = {name: anyio.Event() for name in hosted.config.agents}
        # start requests to pass to the holder, with when each was asked (on Redis's clock, as
        # estimated: ``_on_redis_clock``): one kept through an outage is stamped with it, so a
        # terminate asked after it, kept by its holder, withdraws it (it was stamped later)
        self._wanted: dict[str, Mark] = {}
        # terminated here: a start on Redis to withdraw -> the terminate's mark (only a start
        # asked by its time is deleted; that clock not read yet when it is used: any start)
        self._unwake: dict[str, Mark] = {}
        self._taking: dict[str, bool] = {}  # a renewal in flight (False) or took a start (True)
        self._clock: Clock | None = None  # Redis's clock, and monotonic, read at once
        self._ended: set[str] = set()  # held agents whose supervisor has nothing more to run
        self._let_go: set[str] = set()  # let go by ``_letting_go``: not retaken at once
        self._broken_since: dict[str, float] = {}  # a held agent's live run: its log broken since
        self._warned: set[str] = set()  # agents warned of this outage of a log that fails open
        self.seen: dict[str, dict[str, Any] | None] = {}  # every agent's holder status
        self.seen_at: float | None = None  # when ``seen`` was read (epoch s; None: never)
        # a held agent's state changed: its status is written now, not at the next renewal
        self._changed = {name: anyio.Event() for name in hosted.config.agents}
        self._loop_thread: int | None = None
        hosted.runtime.agents.on_state.append(self._state_changed)

    # -- what the admin surfaces ask -----------------------------------------------------------

    def holds(self, name: str) -> bool:
        return name in self.held

    def request_elsewhere(self, name: str) -> str:
        """``symbi agents run NAME`` on a process that does not hold ``name``'s lease: the
        request goes to the holder through Redis (it starts the agent at its next renewal)."""
        holder = (self.seen.get(name) or {}).get("holder")
        self._wanted[name] = Mark()  # the latest request's time: the operator's last word
        self._poke[name].set()
        return f"start passed to the process holding its lease ({holder or 'none yet'})"

    def withdraw(self, name: str) -> None:
        """An operator's terminate carried out here (``HostedAgents._terminated``): a start asked
        and not taken yet is withdrawn, as a terminate answered by a non-holder does
        (``withdraw_start``): its Redis key is deleted by the lease's loop (at once when this
        process holds the lease and the terminate came on the loop's thread, else at its next
        turn), retried until done."""
        self._wanted.pop(name, None)
        self._unwake[name] = Mark()  # a later terminate's time covers an earlier one's
        if name in self.held and threading.get_ident() == self._loop_thread:
            self._changed[name].set()

    async def withdraw_start(self, name: str) -> bool:
        """A terminate answered here without the lease: a start asked before and not taken yet
        is withdrawn (it no longer expires, so it ran whenever a holder came). True when there
        was one on Redis. Raises ``RedisError``/``OSError``: then a start asked here and not
        passed on yet is kept too (the operator is answered 503, nothing done)."""
        # on the holder a mark (``withdraw``, the loop not poked) while the DEL is in flight: a
        # renewal meanwhile does not take the start; gone once the DEL deleted it, kept for the
        # loop's retry when it fails, and kept when it found nothing (a renewal may have taken
        # the start just before, its orders not read: the mark drops what it took). Poked, the
        # loop deleted it a second time. (A later terminate's mark is another object: kept.)
        mark = None
        if name in self.held:
            mark = self._unwake[name] = Mark()
        asked = self._wanted.get(name)  # (one asked during the DEL is later: kept)
        withdrawn = await self.board.unwake(name)
        if self._wanted.get(name) is asked:
            self._wanted.pop(name, None)
        # (kept through a renewal: one it takes was asked before this DEL, which took another)
        if withdrawn and mark is not None and self._unwake.get(name) is mark and name not in self._taking:
            del self._unwake[name]
        # found nothing as a renewal here had just taken it: the kept mark drops it (withdrawn:
        # not a 404). A renewal whose reply is still on its way is not seen (404, dropped all the same)
        return withdrawn or (mark is not None and self._taking.get(name, False))

    async def pass_order(self, name: str, action: str, who: str, reason: str) -> dict[str, Any] | None:
        """An operator's ``action`` on ``name``, answered here without its lease: left on Redis
        for the holder (it acts after its next renewal). The holder's status as read now, or
        None when no process holds the lease (nothing is left). Raises ``RedisError``/``OSError``:
        the caller refuses the action (fail closed, never dropped silently). A terminate's
        ``withdraw_start`` goes first (the caller's, so a withdrawal is answered and recorded)."""
        seen = (await self.board.statuses([name]))[name]
        self.seen[name] = seen
        if seen is None:
            return None
        # stamped on Redis's clock, as the holder judges it: a replica's clock 30 s off had every
        # order it passed dropped there as stale (logged only), after a 202 here
        order = Order(action=action, by=who, reason=reason, via=self.board.owner, at=await self.board.now())
        await self.board.order(name, order.dumps(), ORDER_TTL_S)
        return seen

    def status(self) -> dict[str, Any]:
        """Every hosted agent and the process running it, as last read from Redis."""
        return {"read_at": self.seen_at, "here": self.board.owner, "agents": dict(self.seen)}

    # -- the background task -------------------------------------------------------------------

    def _state_changed(self, agent: Agent, src: AgentState, to: AgentState) -> None:
        """Other replicas admit the run's credential only while the board says Running
        (``gateway.runtime.runkeys``): a suspension there must not wait up to ``RENEW_S``.
        Only on the loop's thread (an anyio event); another thread's change waits a renewal."""
        if agent.hosted and agent.name in self.held and threading.get_ident() == self._loop_thread:
            self._changed[agent.name].set()

    async def run(self) -> None:
        self._loop_thread = threading.get_ident()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, name="agent-leases-status")
                tg.start_soon(self._drop_starts, name="agent-leases-stale-starts")
                for name, ac in self.hosted.config.agents.items():
                    if ac.enabled:
                        tg.start_soon(self._hold, name, ac, name=f"agent-{name}-lease")
        finally:
            with anyio.CancelScope(shield=True):
                await self.board.aclose()

    async def _drop_starts(self) -> None:
        """Starts left on Redis for the agents this config disables are deleted: a start lives
        while a replica's config has its agent, so it fired whenever it was enabled again (logged). Only the names
        this config lists as disabled: in a rolling deploy another replica's config may enable
        an agent this one lacks, and its starts (answered 202 there) are not ours to delete.
        A removed agent's start expires a day after the last replica whose config has it
        (``LeaseBoard.watch``)."""
        disabled = sorted(n for n, ac in self.hosted.config.agents.items() if not ac.enabled)
        try:
            dropped = await self.board.drop_starts(disabled)
        except _REDIS_ERRORS as e:
            _logger.warning("stale start requests not deleted (%s)", e)
            return
        if dropped:
            _logger.warning("%d start(s) left for the disabled agents %s deleted", dropped, disabled)

    async def _watch(self) -> None:
        names = sorted(self.hosted.config.agents)
        enabled = [n for n in names if self.hosted.config.agents[n].enabled]
        said: list[str] = []  # the refused parts last logged (an ACL's stands: one line, not one a look)
        while True:
            try:
                # the statuses, Redis's clock (read where no lease is held, too: a start asked
                # here is stamped with it) and the life of the starts of the agents this
                # replica runs, in one round trip (it was three every RENEW_S)
                sent = time.monotonic()  # (TIME comes after: the estimate errs ahead, so a
                # withdrawal errs on deleting)
                look = await self.board.watch(names, enabled)
                if look.statuses is not None:  # (else the last ones stand, ``seen_at`` their age)
                    self.seen, self.seen_at = look.statuses, time.time()
                # else the last reading, moved on by monotonic time; nor a slow one (a reconnect): it
                # errs ahead, and marks kept through the outage had a start before a terminate after it
                if look.now is not None:
                    self._set_clock(look.now, sent)
                if look.failed != said:  # each part on its own: one refused loses no other
                    said = look.failed  # logged when it starts being refused, and when it ends
                    why = "; ".join(look.failed) or "every part read again"
                    (_logger.warning if look.failed else _logger.info)("hosted agents' leases: %s", why)
            except _REDIS_ERRORS as e:
                _logger.warning("could not read the hosted agents' leases: %s", e)
            await anyio.sleep(RENEW_S)

    def _doc(self, name: str) -> dict[str, Any]:
        agent = self.hosted.runtime.agents.by_name(name)
        return {
            "state": agent.state.value if agent is not None else "Initializing",
            "run": self.hosted.runs.get(name, 0),
            "agent": agent.id if agent is not None else None,
            "key": self.hosted.run_keys.get(name),  # its run's credential (gateway.runtime.runkeys)
        }

    async def _hold(self, name: str, ac: AgentConfig) -> None:
        """Take ``name``'s lease when free, run it while held; again after losing it."""
        lease = self.board.lease(name)
        while True:
            await self._pass_requests(name)
            # a lease its audit log cannot use is not taken: a replica whose log works runs it
            taken = self._unusable(name) is None and await self._acquire(lease, name)
            if not taken:
                with anyio.move_on_after(RENEW_S):
                    await self._poke[name].wait()
                self._poke[name] = anyio.Event()
                continue
            try:
                await self._run_held(name, ac, lease)
                if name in self._let_go:  # others try every RENEW_S: retaken at once, a log
                    self._let_go.discard(name)  # just recovered killed and restarted it here
                    await anyio.sleep(RENEW_S)
            except* AuditError as eg:  # the log broken (deny): this loop ended, and the gateway with it
                # (except*: one raised inside _run_held's task group comes as an ExceptionGroup)
                _logger.error("agent %s: stopped while the audit log cannot record it (%s)", name, eg)
                await anyio.sleep(RENEW_S)

    async def _acquire(self, lease: Lease, name: str) -> bool:
        try:
            return await lease.acquire(self._doc(name))
        except _REDIS_ERRORS as e:
            _logger.debug("agent %s: lease not taken (%s)", name, e)
            return False

    def _unusable(self, name: str) -> str | None:
        """Why this process cannot run ``name`` now (its audit log refuses), or None. A log that
        fails open (``unsafe_warn``) warns once per outage per agent here, not at every renewal
        (a flood every 3 s); each run started unsafely warns all the same (``_may_start``)."""
        hosted = self.hosted
        if hosted.recordable is None:
            return None
        if hosted.unwritable is not None and hosted.unwritable() is None:
            self._warned.discard(name)  # it records again: its next outage warns again
            return None
        if name in self._warned:  # this outage warned already, and the log fails open
            return None
        try:
            hosted.recordable()  # deny: raises; unsafe_warn: warns
        except AuditError as e:
            return f"its audit log cannot record it ({e.message})"
        if hosted.unwritable is not None:  # (without the quiet check, it cannot tell the end)
            self._warned.add(name)
        return None

    def _set_clock(self, now: float, sent: float) -> None:
        """Redis's clock read (``now``, asked at monotonic ``sent``): it replaces the last
        reading unless it was slow (a reconnect): it errs ahead by its wait, and the marks kept
        through an outage, put on it, had a start asked before a terminate stamped after it."""
        if self._clock is None or time.monotonic() - sent <= CLOCK_RTT_S:
            self._clock = (now, sent)

    async def _on_redis_clock(self, mark: Mark) -> float:
        """When ``mark`` was made on Redis's clock, by the last reading (taken before the TIME it
        sent: it errs later); read first when it never was (no time meant "any start" to a
        withdrawal and "now" to a start: one asked before a terminate outlived it). Raises
        ``RedisError``/``OSError``."""
        if self._clock is None:
            sent = time.monotonic()
            self._set_clock(await self.board.now(), sent)
        assert self._clock is not None  # (read just now)
        return on_clock(self._clock, mark)

    async def _withdraw(self, name: str) -> None:
        if name not in self._unwake:
            return
        # taken before the DEL: a terminate that comes during it adds the name again (a
        # discard after the DEL lost it); put back when the DEL fails. Only a start asked by the
        # terminate: a mark kept through an outage deleted a start asked after it (lost)
        before = self._unwake.pop(name)
        done = False
        try:
            await self.board.unwake(name, await self._on_redis_clock(before))
            done = True
        except _REDIS_ERRORS as e:  # kept: a renewal's start is void until it is withdrawn
            _logger.warning("agent %s: a start could not be withdrawn yet (%s)", name, e)
        finally:  # failed, or cancelled (a renewal's bound ran out in a Redis retry's backoff)
            if not done:
                self._unwake.setdefault(name, before)  # (a terminate during the DEL: its later time)

    async def _pass_requests(self, name: str) -> None:
        await self._withdraw(name)
        if name not in self._wanted:
            return
        asked = self._wanted[name]
        try:
            if not await self.board.wake(name, await self._on_redis_clock(asked)):
                _logger.info("agent %s: a start asked here was withdrawn by a later terminate", name)
            if self._wanted.get(name) is asked:  # (not a later request asked meanwhile)
                self._wanted.pop(name, None)
        except _REDIS_ERRORS as e:
            _logger.warning("agent %s: the start request could not be passed on (%s)", name, e)

    async def _run_held(self, name: str, ac: AgentConfig, lease: Lease) -> None:
        """Run the supervisor while the lease is ours; stop it when it is not (or at exit)."""
        hosted = self.hosted
        self.held.add(name)
        self._broken_since.pop(name, None)
        self._ended.discard(name)
        self._let_go.discard(name)
        if name in self._wanted:  # asked here before this process took the lease
            del self._wanted[name]
            hosted._wake[name].set()
        why = "the gateway stopped"
        try:  # (the record first inside: one that raises still releases the lease)
            hosted.events.emit(Event.AGENT_LEASE_ACQUIRED, {"name": name, "holder": self.board.owner})
            _logger.info("agent %s: this process holds its lease and runs it", name)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._supervise, name, ac)
                why = await self._keep(name, lease)
                tg.cancel_scope.cancel()  # the run's process is killed; waited for here
            self._lost(name, why, lease_left(lease) if lease.valid_until else None)
        finally:
            self.held.discard(name)
            if hosted._wake[name].is_set():  # a start taken here and not run: the next holder's
                hosted._wake[name] = anyio.Event()  # (left set, it fired at this one's next turn)
                # only one an on-demand supervisor still waits for: a terminated (ended) one's,
                # or a with-gateway one's (nothing waits for it), went holder to holder for good;
                # an interval agent's is dropped (its next run comes with the interval anyway)
                if ac.start == "on-demand" and name not in self._ended:
                    self._wanted.setdefault(name, Mark())  # (a terminate after it drops it)
            self.hosted.end_record(name, f"stopped here, {why}")  # on every way out: lost, stopped, cancelled
            with anyio.CancelScope(shield=True):  # each its own bound: a slow pass keeps the release
                with anyio.move_on_after(RENEW_S):
                    await self._pass_requests(name)  # before the release: also when the gateway stops
                with anyio.move_on_after(RENEW_S):
                    await self._release(lease)

    def _lost(self, name: str, why: str, left: float | None) -> None:
        """The run has ended here (its process is gone): on the audit and the log, with how long
        before the lease could have expired (None: it was no longer ours). The agent's record is
        ended by the caller's ``finally`` (``HostedAgents.end_record``), on every way out."""
        record_acted(  # (the loss itself may be that the audit log cannot record)
            self.hosted.events,
            Event.AGENT_LEASE_LOST,
            {
                "name": name,
                "holder": self.board.owner,
                "reason": why,
                "stopped_before_expiry_s": None if left is None else round(left, 3),
            },
        )
        ahead = "" if left is None else f" {max(left, 0.0):.1f} s before its lease could expire"
        _logger.error("agent %s: its run was stopped here%s: %s", name, ahead, why)

    async def _release(self, lease: Lease) -> None:
        try:
            await lease.release()
        except _REDIS_ERRORS as e:
            _logger.warning("agent %s: lease not released, it expires by itself (%s)", lease.name, e)

    async def _supervise(self, name: str, ac: AgentConfig) -> None:
        await self.hosted._supervise(name, ac)
        self._ended.add(name)  # a start taken after this is never run (nor passed on)
        await anyio.sleep_forever()  # nothing more to run: the lease stays here all the same

    async def _keep(self, name: str, lease: Lease) -> str:
        """Renew until the lease is lost: why it was (the caller then stops the agent)."""
        wait = RENEW_S
        while True:
            with anyio.move_on_after(wait):
                await self._changed[name].wait()
            self._changed[name] = anyio.Event()
            if (why := self._letting_go(name)) is not None:
                self._let_go.add(name)
                # its stopped live run was asked for (a start, or a restart): passed on to the
                # next holder, which waited for a start that never came (taken here). A refused
                # run's start is still in ``_wake`` (a terminate since withdrew it): passed on
                # with it by ``_run_held``, not here (a terminate's mark may be gone by now)
                ondemand = self.hosted.config.agents[name].start == "on-demand"
                if ondemand and name not in self.hosted.refusing and not self._stopped(name):
                    self._wanted.setdefault(name, Mark())  # (a terminate after it drops it)
                return why
            bound = lease.valid_until - STOP_MARGIN_S - time.monotonic()
            if bound <= 0:
                return "could not renew its lease in time (Redis unreachable)"
            self._taking[name] = False  # in flight: a terminate's mark is kept (its reply may take one)
            try:  # (the inner: only the renewal's failures retried, an order's error is not one)
                try:
                    with anyio.fail_after(bound):
                        await self._withdraw(name)  # a terminate's, before the renewal takes the start
                        got = await lease.renew(self._doc(name))
                except (*_REDIS_ERRORS, TimeoutError) as e:
                    _logger.warning("agent %s: lease renewal failed (%s); retrying", name, e)
                    wait = min(RETRY_S, max(0.0, lease.valid_until - STOP_MARGIN_S - time.monotonic()))
                    continue
                if not got.held:
                    return "its lease was taken or expired (another token holds it)"
                self._taking[name] = got.woken
                # the orders first: a terminate that came in the same renewal window as the start
                # was refused ("Initializing") once the supervisor had taken the start, and it ran
                await self._take_orders(name, got.asked)
                # not one asked by a terminate's time whose mark is kept (one asked after it runs)
                if got.asked is not None and not voids(self._unwake.get(name), self._clock, got.asked):
                    self.hosted._wake[name].set()
            finally:
                self._taking.pop(name, None)
            wait = RENEW_S

    def _stopped(self, name: str) -> bool:
        """Whether an operator has stopped ``name`` here: its start withdrawn and not asked
        again, its supervisor ended, or its live run being terminated (a start passed on for it
        ran the terminated agent on the next holder)."""
        agent = self.hosted.runtime.agents.by_name(name)
        terminating = agent is not None and self.hosted.runtime.terminating(agent)
        return name in self._unwake or name in self._ended or terminating

    def _letting_go(self, name: str) -> str | None:
        """Why the held ``name`` goes to a replica whose log works (None: kept here): its runs
        are refused here (kept, it ran nowhere), or its live run's calls have been refused here
        for ``AUDIT_RETRY_S`` or more (kept, every call failed until the run ended); the run is
        stopped as at a lost lease. A run ended (an operator's terminate, ``restart = "never"``)
        or suspended is kept: an operator's stop stands. The log is seen broken at a renewal
        (every ``RENEW_S``), so the run stops 5-9 s after the break; an outage over before the
        next renewal is never seen, and two outages between renewals count as one."""
        why = self._unusable(name)
        agent = self.hosted.runtime.agents.by_name(name)
        live = agent is not None and agent.state is AgentState.RUNNING
        if why is None or not (live or name in self.hosted.refusing):
            self._broken_since.pop(name, None)
            return None
        if name in self.hosted.refusing:
            return why
        since = self._broken_since.setdefault(name, time.monotonic())
        return why if time.monotonic() - since >= AUDIT_RETRY_S else None

    async def _take_orders(self, name: str, asked: float | None = None) -> None:
        """Carry out the operators' orders other processes left for ``name`` (well-formed ones);
        ``asked``: this renewal took a start asked then, not acted on yet (a terminate after withdraws it)."""
        try:
            sent = time.monotonic()
            raw, now = await self.board.take_orders(name)
        except _REDIS_ERRORS as e:  # left where they are: taken at the next renewal
            _logger.warning("agent %s: operator orders not read (%s)", name, e)
            return
        self._set_clock(now, sent)  # (a reading too: the first, before ``_watch``'s, at times)
        for order in filter(None, (parse_order(r, now) for r in raw)):
            try:
                self._carry_out(name, order, asked)
            except (AuditError, InvalidTransition) as e:  # taken off Redis: the rest carried out
                # and the lease kept (out of _keep it let the lease go, and another replica ran
                # the agent afresh: a terminate undone; session 43). The state moves and the
                # process stops before the record: done, its record refused, so the log has it
                # (a bug is not caught here: it ends the lease loop, the run and the gateway)
                _logger.error(
                    "agent %s: the %s by %s via %s (%r) is not on the audit record: %s",
                    *(name, order.action, order.by, order.via, order.reason, e),
                )

    def _carry_out(self, name: str, order: Order, asked: float | None = None) -> None:
        """One order left for ``name``: carried out here, or refused on the record. A terminate's
        mark is put at the order's time (``dated``): a start asked after it is not withdrawn."""
        before = self._unwake.get(name)
        agent = self.hosted.runtime.agents.by_name(name)
        try:
            if agent is None:  # on-demand, never started here: nothing to act on but a start
                doc = {"name": name, "by": order.by, "reason": order.reason, "via": order.via}
                doc["result"] = "refused: the agent has not run here yet"
                took = asked is not None and asked <= order.at  # (a start asked after it stands)
                if order.action == "terminate" and (self.hosted.withdraw_start(name, mark=False) or took):
                    self.withdraw(name)
                    # the start this renewal took, not handed to the supervisor yet, or one its log
                    # refused, waiting for the retry: withdrawn (before the record: it may refuse)
                    doc["result"] = "a pending start withdrawn (the agent has not run here yet)"
                self.hosted.events.emit(OPERATOR_EVENTS[order.action], doc, principal=order.by)
                return
            _, result = act(self.hosted.runtime, self.hosted.events, agent, order)
            _logger.info("agent %s: %s from %s via %s: %s", name, order.action, order.by, order.via, result)
        finally:  # (also when its record refused: the mark stands). A terminate's only: another
            mark = self._unwake.get(name)  # thread's terminate made during a suspend keeps its time
            if order.action == "terminate" and mark is not None and mark is not before:
                dated(mark, order.at, self._clock, before)


def lease_left(lease: Lease) -> float:
    """Seconds left on ``lease`` by this process's count (0 once released or lost)."""
    return lease.valid_until - time.monotonic() if lease.valid_until else 0.0
