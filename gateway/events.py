"""Gateway events and the one catalogue of their types.

Every event the gateway records has a type from ``Event`` (as mitmproxy keeps its hooks in
one place): the per-call records the audit step writes and the gateway's own events (config
load, upstream up/down, drift, policy reload...). Producers call
``sink.emit(Event.X, details)``; the audit log is the real sink (``gateway.audit``), and a
logging sink stands in where no audit log is configured (tests, ``symbi config check``).
``tests/test_events.py`` checks that every emit in ``gateway/`` names a member of ``Event``.
A new event type is added here first, with a line saying when it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gateway.held import Held, traced

if TYPE_CHECKING:
    from gateway.errors import AuditError

_logger = logging.getLogger("symbi.events")


class Event(StrEnum):
    """Every event type, by area. The value is what the audit log stores."""

    # calls through the chain (one record each, written by gateway.steps.audit)
    TOOL_CALL = "tool.call"  # tools/call: allowed, denied, failed or crashed
    RESOURCE_READ = "resource.read"  # resources/read through the chain
    PROMPT_GET = "prompt.get"  # prompts/get through the chain
    # the gateway process
    CONFIG_LOADED = "config.loaded"  # the gateway was assembled from a config
    GATEWAY_START = "gateway.start"  # the gateway started serving
    GATEWAY_STOP = "gateway.stop"  # the gateway stopped
    # upstream servers
    UPSTREAM_UP = "upstream.up"  # connected (details: restarts so far)
    UPSTREAM_DOWN = "upstream.down"  # the connection ended or failed (details: error)
    UPSTREAM_RESTART_REQUESTED = "upstream.restart_requested"  # an admin asked for a restart
    UPSTREAM_BREAKER = "upstream.breaker"  # an upstream's circuit breaker changed state
    # an oversized message, wedged (no answer to a ping), or a list over mcp.max_listed_per_upstream
    UPSTREAM_MISBEHAVED = "upstream.misbehaved"
    UPSTREAM_CLIENT_REQUEST = "upstream.client_request"  # sampling/elicitation/roots relayed or refused
    # the MCP front (gateway.server.front)
    REQUEST_ALLOWED = "request.allowed"  # a non-call request (list, subscribe...) was let through
    REQUEST_DENIED = "request.denied"  # the policy refused a non-call request
    REQUEST_REFUSED = "request.refused"  # a request was refused before the policy (limits, shape)
    STATUS_READ_DENIED = "status.read_denied"  # a non-admin asked for the gateway's status resource
    LOGGING_SET_LEVEL = "logging.set_level"  # a client changed the gateway's log level
    CATALOG_REFUSED = "catalog.refused"  # a tool/resource/prompt was left out of the catalogue
    # tool verification
    TOOL_VERIFICATION = "tool.verification"  # a tool's verdict changed (status, blocked, key)
    TOOL_DRIFT = "tool.drift"  # a tool's definition changed (old and new hash)
    TOOL_VANISHED = "tool.vanished"  # an upstream no longer lists a tool
    TOOL_APPROVED = "tool.approved"  # an admin approved a tool's current definition
    TOOL_APPROVALS_CHANGED = "tool.approvals_changed"  # approvals/manifests changed outside
    TOOL_KEYS_CHANGED = "tool.keys_changed"  # an upstream's discovered key rotated, revoked, unreachable
    TOOL_SCREENING = "tool.screening"  # a tool\'s screening findings changed (poisoning rules)
    # policy
    POLICY_RELOADED = "policy.reloaded"  # a new policy is in force
    POLICY_RELOAD_REFUSED = "policy.reload_refused"  # a changed policy failed; the old one stays
    POLICY_RELOAD_REQUESTED = "policy.reload_requested"  # an admin asked for a reload (API)
    POLICY_PUBLISHED = "policy.published"  # this replica published the policy it loaded to the others
    # discovered servers (gateway.onboard)
    SERVER_DISCOVERED = "server.discovered"  # discovery found a server (quarantined until approved)
    SERVER_REMOVED = "server.removed"  # a discovered server disappeared from its source
    SERVER_APPROVED = "server.approved"  # a person approved a discovered server: started (tofu)
    # an approved discovered server Claude Code's managed MCP policy blocks (or whose config holds
    # references the gateway does not fill in): stopped, or not started
    SERVER_BLOCKED = "server.blocked"
    # a running discovered server stopped: gone from its source, or its launch config changed there
    SERVER_STOPPED = "server.stopped"
    # agents (gateway.runtime)
    AGENT_REGISTERED = "agent.registered"  # a session or hosted agent got its gateway-made id
    AGENT_STATE = "agent.state"  # an agent moved along one lifecycle edge (from, to, reason)
    AGENT_SUSPEND_PENDING = "agent.suspend_pending"  # a suspension waits for the agent's calls to end
    AGENT_SUSPEND_REQUESTED = "agent.suspend_requested"  # an operator suspended an agent
    AGENT_RESUME_REQUESTED = "agent.resume_requested"  # an operator resumed an agent
    AGENT_TERMINATE_REQUESTED = "agent.terminate_requested"  # an operator terminated an agent
    AGENT_RUN_REQUESTED = "agent.run_requested"  # an operator started a hosted agent
    AGENT_RESTART_SCHEDULED = "agent.restart_scheduled"  # a hosted agent ended; a restart is due
    AGENT_ESCALATED = "agent.escalated"  # a hosted agent failed too often; restarts stop
    AGENT_EXITED = "agent.exited"  # a hosted agent's process ended (exit code, oom)
    AGENT_FAILED = "agent.failed"  # a hosted agent could not start or run
    # with [state] redis_url, a hosted agent runs in the one replica holding its lease
    AGENT_LEASE_ACQUIRED = "agent.lease_acquired"  # this process took a hosted agent's lease: it runs it
    # this process could not keep a hosted agent's lease (Redis unreachable, or another token in
    # it): its run was stopped before the lease could expire, so no two replicas run it at once
    AGENT_LEASE_LOST = "agent.lease_lost"
    # a session agent's suspension is its principal's (gateway.runtime.holds): every session
    # agent of the principal is refused until an operator clears it
    PRINCIPAL_SUSPENDED = "principal.suspended"  # a principal was suspended (by its agent, or an operator)
    PRINCIPAL_SUSPEND_REQUESTED = "principal.suspend_requested"  # an operator suspended a principal
    PRINCIPAL_RESUME_REQUESTED = "principal.resume_requested"  # an operator cleared a principal's suspension
    # a principal's suspension refused past the bound of held principals (``HOLDS_MAX``): nowhere
    # ("in_force": "nowhere": its agent is suspended, other sessions of it are not refused), or
    # by Redis ("this process only": the other replicas let it in); ``symbi status`` shows both
    PRINCIPAL_HOLD_REFUSED = "principal.hold_refused"
    # the agent bus (gateway.bus): details are message metadata (id, sender, recipient or topic,
    # kind, timestamps, ciphertext size), never a body
    BUS_SEND = "bus.send"  # a direct message, request or reply was accepted into the recipient's inbox
    BUS_PUBLISH = "bus.publish"  # a topic message was accepted (subscriber count, refused subscribers)
    BUS_SUBSCRIBE = "bus.subscribe"  # an agent subscribed to a topic pattern
    BUS_UNSUBSCRIBE = "bus.unsubscribe"  # an agent removed a subscription
    BUS_DENIED = "bus.denied"  # the policy (or the per-agent rate) refused a send, publish or subscribe
    BUS_DELIVERY_FAILED = "bus.delivery_failed"  # a message was not accepted (inbox full, backend down)
    BUS_REJECTED = "bus.rejected"  # a stored message failed a receive check (signature, time, replay...)
    BUS_EXPIRED = "bus.expired"  # messages passed their ttl and were removed unread
    BUS_REQUEST_TIMEOUT = "bus.request_timeout"  # a request got no reply within its timeout
    BUS_REPLY_LATE = "bus.reply_late"  # a reply arrived for a request no longer waiting
    # agent memory and knowledge (gateway.memory)
    MEMORY_STORED = "memory.stored"  # an agent stored a memory (metadata only, never the text)
    MEMORY_SEARCHED = "memory.searched"  # an agent recalled memories
    MEMORY_READ = "memory.read"  # a memory:// resource was read
    MEMORY_TASK_ENDED = "memory.task_ended"  # an agent's working memory for a task was cleared
    MEMORY_DENIED = "memory.denied"  # the policy refused a memory or knowledge access
    MEMORY_PURGED = "memory.purged"  # retention removed old memories
    MEMORY_PURGE_FAILED = "memory.purge_failed"  # a retention sweep failed
    KNOWLEDGE_SEARCHED = "knowledge.searched"  # a knowledge base was searched
    KNOWLEDGE_INGESTED = "knowledge.ingested"  # documents were ingested into a knowledge base
    # relayed or bridged between a client and an upstream (issue 20): kinds, targets and who
    # was told, never contents
    NOTIFY_LIST_CHANGED = (
        "notify.list_changed"  # a catalogue change was announced (kinds, told, not told, ms)
    )
    NOTIFY_RESOURCE_UPDATED = (
        "notify.resource_updated"  # an upstream's resources/updated went to who may read it
    )
    BRIDGE_INPUT_REQUEST = (
        "bridge.input_request"  # an upstream's question was put to a client of the other era
    )
    # audit log
    AUDIT_KEY_ROTATED = "audit.key_rotated"  # the signing key was handed over (signed proof)
    AUDIT_ARCHIVED = "audit.archived"  # retention moved the oldest events out (signed hand-off)
    AUDIT_READ_DENIED = "audit.read_denied"  # a non-admin asked for audit://recent
    # the chains PostgreSQL held that this replica's shipper had not named yet (gateway.state.audit_roster)
    AUDIT_SHARED_ROSTER = "audit.shared_roster"
    # a principal's refused calls past audit.refusals_recorded_per_window, counted instead of
    # recorded one by one (gateway.audit.refusals): at its window's end, a flush or close
    AUDIT_REFUSALS_SUMMARIZED = "audit.refusals_summarized"


EVENT_TYPES: frozenset[str] = frozenset(e.value for e in Event)

# Events that say a request was refused and did nothing (the chain's refused calls are
# ``tool.call`` & co. with outcome "denied"): past a principal's budget per window they are
# counted, not recorded one by one (``gateway.audit.refusals``), as refused calls are.
REFUSAL_EVENTS: frozenset[str] = frozenset(
    {
        Event.REQUEST_DENIED,
        Event.REQUEST_REFUSED,
        Event.STATUS_READ_DENIED,
        Event.AUDIT_READ_DENIED,
        Event.BUS_DENIED,
        Event.MEMORY_DENIED,
    }
)

# Also counted: an upstream's own request to the client (sampling, elicitation, roots) that
# was refused (no caller to ask, several principals' calls in flight): a hostile upstream sent
# 2,000 roots/list requests with no call in flight and got 2,000 signed records, and on.
# Counted under the caller's principal when there was one, else ``upstream:NAME``.
TALLIED_EVENTS: frozenset[str] = REFUSAL_EVENTS | {Event.UPSTREAM_CLIENT_REQUEST}


def tallied_as(event_type: str, details: Mapping[str, Any], principal: str | None) -> str | None:
    """Whom an event of ``TALLIED_EVENTS`` is counted under (``gateway.audit.refusals``), or
    None: it is recorded one by one (a relayed request, a refusal of no principal)."""
    if event_type != Event.UPSTREAM_CLIENT_REQUEST:
        return principal
    if details.get("outcome") != "refused":
        return None
    return principal if principal is not None else f"upstream:{details.get('upstream')}"


class EventSink(Protocol):
    def emit(
        self,
        event_type: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        """Record one event. Must not block the caller for long; must not drop the event.

        Safe to call from any thread: worker threads (``anyio.to_thread``) emit too. The audit
        log queues to its writer thread and the metrics tee uses locked counters
        (``tests/audit/test_log.py`` emits from nine threads at once and checks the chain).
        """


def record_acted(sink: EventSink, event_type: Event, details: Mapping[str, Any], **who: str | None) -> None:
    """Record a change a background task acts on whatever the audit log says (a refusal is
    logged, once: ``refused_for_good``; no caller acts otherwise, so none is told).
    With the log broken (``audit.on_failure = "deny"``) ``emit`` raises ``AuditError``: out of
    a background task it ended the task, and the gateway's task group with it, before the
    change was acted on. Every call is refused meanwhile (the audit step), /readyz says why.
    The only record of a change is not made here but held first (``Unsent.keep``, then
    ``queue``): it goes to the log ahead of what follows and is sent again until committed."""
    from gateway.errors import AuditError

    try:
        sink.emit(event_type, details, **who)
    except AuditError as e:
        refused_for_good(event_type, e, "acted on all the same", traced(details, **who))


def refused_for_good(what: str, err: AuditError, then: str, details: Mapping[str, Any]) -> None:
    """THE rule for a record the audit log refused (``record_acted``, ``Unsent``): a log
    refuses an emit only when broken or closed, for the process's life (a restart mends it).
    So it is logged here once, its last trace, and its caller does not try it again: not at the
    next recheck, refresh or fetch (each try was one more ERROR, for good)."""
    _logger.error(  # the details a record's own argument: read back as they were (a dict)
        "%s not recorded: the audit log refuses for good (restart the gateway): %s; %s: %s",
        what,
        err,
        then,
        dict(details),
    )


def _let_go(held: Held, where: str) -> None:
    """A held record the stop let go (``Unsent.abandon``, or kept after it): this line is its
    last trace."""
    _logger.error("%s %s: the gateway stopped first: %s", held.kind, where, held.trace())


@runtime_checkable
class Recording(Protocol):
    """A sink that can say when an event is committed (``AuditLog.submit``)."""

    def submit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> asyncio.Future[int]:
        """Queue one event now (ahead of any emitted later) and return its commit: the
        sequence number, or the error the writer failed it with. Raises ``AuditError`` when
        the log refuses it before it is queued (broken, closed)."""
        ...


# how long ``Unsent.send`` waits for the commits it queued (as a call's, ``steps.audit``); a
# commit not come by then stays in flight, not cancelled: the event is queued in the writer
# and is written once the disk moves again
COMMIT_WAIT_S = 30.0


class Unsent:
    """Records a background task acted on, kept (in order) until the log COMMITTED them: some
    are the only record of a change (a CLI revoke, a tool's status) and must not be lost with a
    log broken for a while, nor with a writer failing after it took them. ``queue`` hands the
    held records to the log without waiting (a stalled disk must hold up no revocation nor
    catalogue swap); ``send`` queues and waits a while; ``submit`` queues one more behind them
    and returns its commit (an operator's record, waited for: ``server.oprecord``). A record
    queued stays in flight until its commit comes, however long: queued once, written once. Only one whose commit failed is
    queued again, carrying ``held_since_ns``, the time it was acted on. Bounded: at most
    ``cap`` records waiting to be sent; past it the oldest of those are dropped, logged (a log
    broken for days must not grow memory without end). A record in flight is not dropped: the
    writer holds it and will write it (dropping it logged a record "never recorded" that was
    then written); it leaves once its commit settles, which a dead writer settles too (failed).
    A log that refused them is broken for good: never tried again (``refused_by``)."""

    def __init__(self, cap: int = 10_000) -> None:
        self._held: deque[Held] = deque()
        self._cap = cap
        # the log that refused them, and why: a log refuses only when broken or closed for the
        # process's life, so it is not tried again (each try was two more ERRORs per recheck)
        self._refused: tuple[EventSink, AuditError] | None = None
        # how many of them are not in flight (what ``cap`` bounds): counted, so a stalled disk
        # with ``cap`` records in flight does not cost a walk of them all on every ``keep``
        self._waiting = 0
        # the gateway stopped (``abandon``): a record let go in flight, failed later, was not
        # dropped by the bound; its waiter is told the stop came first (``oprecord``)
        self.stopped = False
        self._last: EventSink | None = None  # the log they were last handed to (``_hand``)

    def __len__(self) -> int:
        return len(self._held)

    def refused_by(self, sink: EventSink) -> AuditError | None:
        """Why ``sink`` refused these records for good (held, logged when the gateway stops;
        never sent to it again), or None."""
        return self._refused[1] if self._refused is not None and self._refused[0] is sink else None

    def holds(self, details: Mapping[str, Any]) -> bool:
        """Whether the record kept with this very ``details`` (identity) is still held: not
        committed, nor dropped by the bound (an operator's, whose commit failed: ``oprecord``).
        Identity on purpose: two equal records are two actions (the same admin's two reloads),
        and one committed or dropped is not held because the other is; each caller builds its
        record's dict afresh and asks with it. A walk: asked only after a failure."""
        return any(h.details is details for h in self._held)

    def held(self) -> list[tuple[Event, Mapping[str, Any]]]:
        """The records not committed yet, oldest first, as they are (or will be) sent."""
        return [(h.kind, h.sent_details()) for h in self._held]

    def keep(
        self,
        kind: Event,
        details: Mapping[str, Any],
        *,
        refused: bool = False,
        since_ns: int | None = None,
        principal: str | None = None,
        agent: str | None = None,
    ) -> Held:
        """Hold one record, after the others, to send at the next ``queue`` (``refused``: the
        log refused it once, so it goes late, stamped with ``since_ns``, when it was acted on:
        now by default). ``principal``/``agent``: whom the record is of, as ``emit``'s. It goes
        to the log the list was last handed to (the gateway's one sink, its ``events``): refused
        for good by it, this line is its trace until the stop. After the stop (``abandon``)
        nothing is held: its line is its last trace (a request racing the stop)."""
        held = Held(kind, details, since_ns)
        held.late = refused
        held.principal, held.agent = principal, agent
        if self.stopped:
            _let_go(held, "never recorded")
            return held
        if self._last is not None and (refusal := self.refused_by(self._last)) is not None:
            refused_for_good(kind, refusal, "held", held.trace())
        self._held.append(held)
        self._waiting += 1
        if self._waiting > self._cap:
            self._trim()
        return held

    def submit(
        self,
        sink: EventSink,
        kind: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> asyncio.Future[int]:
        """Hold one record behind the others and ``queue`` them all: its commit, to wait on (a
        wait that ends first leaves it in flight; a commit that fails holds it, stamped). The
        held ones go first: the chain keeps the order things were done in. Raises the log's
        ``AuditError`` when it (or an older held one, ahead of it) is refused: held, stamped,
        never sent to that log again (``refused_by``); or an ``AuditError`` of its own when
        the bound dropped it at once (not held)."""
        from gateway.errors import AuditError

        if not isinstance(sink, Recording):  # a commit to wait on is the point (a caller's bug)
            raise TypeError(f"{type(sink).__name__} cannot say when a record is committed")
        self._last = sink  # (where it goes: ``keep`` says this log's refusal only)
        mine = self.keep(kind, details, principal=principal, agent=agent)  # (not ``_held[-1]``: trimmed)
        if self.stopped:  # (logged by ``keep``, never sent: not the log's refusal)
            raise AuditError(f"{kind} not held: the gateway stopped first")
        refused = self._hand(sink)
        if mine.commit is None:  # refused at it or ahead of it: ``_hand`` stamped it
            raise refused or AuditError(f"{kind} dropped at once: over {self._cap} records held for the log")
        return mine.commit

    def queue(self, sink: EventSink) -> list[asyncio.Future[int]]:
        """Hand every held record not in flight to ``sink``, in order, without waiting: what is
        emitted after this is queued after them. The commits in flight are returned. A sink
        that cannot say when it committed (logging) wrote a record once ``emit`` returned.
        After a refusal the rest are not tried (kept in order, stamped)."""
        self._hand(sink)
        return [h.commit for h in self._held if h.commit is not None]

    def _hand(self, sink: EventSink) -> AuditError | None:
        """``queue``'s walk: the log's refusal that stopped it, if one did."""
        from gateway.errors import AuditError

        self._last = sink  # (``keep`` says a refusal for good of this log only)
        if (refusal := self.refused_by(sink)) is not None:
            self._late()
            return refusal  # said once, when it refused (``refused_for_good``)
        recorder = sink if isinstance(sink, Recording) else None  # asked once, not per record
        for h in list(self._held):
            if h.commit is not None:
                continue  # in flight: queued once, not again
            try:
                if recorder is not None:
                    h.commit = recorder.submit(h.kind, h.sent_details(), principal=h.principal, agent=h.agent)
                    self._waiting -= 1
                    h.commit.add_done_callback(functools.partial(self._settled, h, sink))
                else:
                    sink.emit(h.kind, h.sent_details(), principal=h.principal, agent=h.agent)
                    self._held.remove(h)
                    self._waiting -= 1
            except AuditError as e:
                self._late()
                for w in self._held:  # each one's line now (never sent to it again): a kill
                    if w.commit is None:  # before the stop's ``abandon`` lost the lot
                        refused_for_good(w.kind, e, "held", w.trace())
                self._refused = (sink, e)
                return e
        return None

    async def send(self, sink: EventSink, records: Iterable[tuple[Event, Mapping[str, Any]]] = ()) -> None:
        """Hold ``records`` after what is held, ``queue`` them all and wait up to
        ``COMMIT_WAIT_S`` for their commits (not cancelled when it ends: they stay in flight).
        Those not committed stay held (``held``); after the stop nothing is (logged by ``keep``)."""
        for kind, details in records:  # held before any wait: a cancelled send loses none
            self.keep(kind, details)
        batch = list(self._held)
        try:
            flying = self.queue(sink)
            if flying:
                await asyncio.wait(flying, timeout=COMMIT_WAIT_S)
        except BaseException:
            self._late()  # cancelled or failed: whatever of it goes again goes stamped
            raise
        left = {id(h) for h in self._held}
        waiting = sum(1 for h in batch if id(h) in left)
        if waiting and self.refused_by(sink) is None:  # a refusal for good was said once
            _logger.error("%d records not committed yet, held until they are", waiting)

    def abandon(self) -> None:
        """The gateway stops: each record not committed is logged (the last trace of it: some
        are the only record of a change), as one dropped at the cap is: one the log never took,
        and one queued in a stalled writer (the close may give up on it, and no callback is left
        to say so)."""
        for h in self._held:
            _let_go(h, "never recorded" if h.commit is None else "queued, not committed")
            h.commit = None  # let go: a commit settling later is not this list's any more
        self._held.clear()
        self._waiting = 0
        self.stopped = True

    def _settled(self, h: Held, sink: EventSink, commit: asyncio.Future[int]) -> None:
        """A commit ended (on ``sink``, where it was sent): the record is dropped, or (failed)
        queued again at the next ``queue``."""
        from gateway.errors import AuditError

        if h.commit is not commit:
            return
        # a cancelled wait leaves the event in the writer's queue: written, not queued again
        err = None if commit.cancelled() else commit.exception()
        if err is None:
            with contextlib.suppress(ValueError):  # let go already (``abandon``)
                self._held.remove(h)
            return
        h.commit, h.late = None, True  # (this one only: a batch failing at once is not N² work)
        self._waiting += 1
        if self._waiting > self._cap:  # a dying writer failing ``cap`` in flight: bounded now
            self._trim()
        # a bug, not a refusal, is logged with its trace; a refusal is counted by ``send``
        bug = not isinstance(err, AuditError)
        level = logging.ERROR if bug else logging.DEBUG
        _logger.log(level, "%s not committed, held: %r", h.kind, err, exc_info=err if bug else None)
        # its own log refused for good while it was in flight (another log's refusal is not
        # why this one failed): never sent again, its line now (as those held at the refusal)
        if (refusal := self.refused_by(sink)) is not None and h in self._held:
            refused_for_good(h.kind, refusal, "held", h.trace())

    def _trim(self) -> None:
        # only records not in flight count against the cap and are dropped, the oldest first:
        # one in flight is the writer's (its queue holds it anyway); the walk stops at them
        over = (h for h in self._held if h.commit is None)
        for dropped in list(itertools.islice(over, self._waiting - self._cap)):
            self._held.remove(dropped)
            self._waiting -= 1
            _logger.error(  # its last trace: what was done, and by whom
                "%s never recorded: over %d records held for a broken log: %s",
                dropped.kind,
                self._cap,
                dropped.trace(),
            )

    def _late(self) -> None:
        # sent after records made later: each one not in flight says when it was acted on
        for h in self._held:
            if h.commit is None:
                h.late = True


class LoggingSink:
    """Writes events to the log only."""

    def emit(
        self,
        event_type: Event,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        if _logger.isEnabledFor(logging.INFO):  # no copies made for a line nobody writes (audit off)
            _logger.info(
                "event %s %s", event_type, dict(details), extra={"fields": {"event": str(event_type)}}
            )
