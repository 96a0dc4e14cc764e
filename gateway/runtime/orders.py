"""An operator's suspend / resume / terminate of an agent, wherever it runs.

One process acts on an agent it has (``gateway.server.operations.agent_action``). With shared
state a hosted agent runs in the one process holding its lease (``gateway.runtime.leased``):
an action answered by another process is passed to the holder as an *order* on Redis
(``gateway.state.leases``: ``symbi:lease:orders:NAME``), written only by the admin API (the
admin role), taken once (read and deleted in one transaction) by the holder at its next
renewal, and carried out there with the admin who asked on the audit record, as a local
action is. A session agent's order goes the same way to the process holding that session
(``gateway.runtime.sessionorders``), naming the agent's id. The holder acts only on a
well-formed order of the last ``ORDER_TTL_S``: anything else in the key is dropped and
logged, never acted on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import AuditError, InvalidTransition
from gateway.events import Event

if TYPE_CHECKING:
    from gateway.events import EventSink
    from gateway.runtime.agents import Agent
    from gateway.runtime.core import AgentRuntime

_logger = logging.getLogger("symbi.runtime.orders")

ACTIONS = ("suspend", "resume", "terminate")
OPERATOR_EVENTS = {
    "suspend": Event.AGENT_SUSPEND_REQUESTED,
    "resume": Event.AGENT_RESUME_REQUESTED,
    "terminate": Event.AGENT_TERMINATE_REQUESTED,
}
ORDER_TTL_S = 20.0  # an order not taken by then (no holder renewed) is dropped, never replayed
REASON_MAX = 500


@dataclass(frozen=True)
class Order:
    action: str  # one of ACTIONS
    by: str  # the admin principal who asked
    reason: str
    via: str  # the process the request reached
    at: float  # epoch s, when it was asked
    agent: str = ""  # a session agent's id (``gateway.runtime.sessionorders``); "": a hosted agent's lease

    def dumps(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def parse_order(raw: bytes | str, now: float | None = None) -> Order | None:
    """A well-formed, fresh order, or None (logged): nothing else is acted on."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        _logger.warning("an agent order that is not a JSON object was dropped")
        return None
    action, by, reason, via, at = (doc.get(k) for k in ("action", "by", "reason", "via", "at"))
    agent = doc.get("agent", "")
    ok = (
        action in ACTIONS
        and isinstance(by, str)
        and 0 < len(by) <= 200
        and isinstance(reason, str)
        and len(reason) <= REASON_MAX
        and isinstance(via, str)
        and isinstance(agent, str)
        and len(agent) <= 200
        and isinstance(at, int | float)
        and not isinstance(at, bool)
        and _a_time(at)
    )
    if not ok:
        _logger.warning("a malformed agent order was dropped: %.200s", raw)
        return None
    assert isinstance(at, int | float) and isinstance(action, str)  # for mypy: checked above
    age = (time.time() if now is None else now) - at
    if not -ORDER_TTL_S <= age <= ORDER_TTL_S:
        _logger.warning("a stale agent order (%.1f s old) was dropped", age)
        return None
    return Order(action=action, by=str(by), reason=str(reason), via=str(via), at=float(at), agent=str(agent))


def _a_time(at: float) -> bool:
    # an integer past a float's range raised OverflowError out of the orders loop (it ended the
    # session agents' task group, and a lease runner's, with the gateway); NaN, infinities too
    try:
        return math.isfinite(float(at))
    except OverflowError:
        return False


def act(
    runtime: AgentRuntime, events: EventSink, agent: Agent, order: Order, *, cleared: bool = False
) -> tuple[bool, str]:
    """Carry out ``order`` on ``agent`` here (``carry_out``) and emit its audit record: the
    holder of a passed order. The audit record names the admin who asked (its principal) and
    the process it came ``via``."""
    done, result, doc = carry_out(runtime, agent, order, cleared=cleared)
    if doc is not None:
        events.emit(OPERATOR_EVENTS[order.action], doc, principal=order.by, agent=agent.id)
    return done, result


def carry_out(
    runtime: AgentRuntime, agent: Agent, order: Order, *, cleared: bool = False
) -> tuple[bool, str, dict[str, Any] | None]:
    """Carry out ``order`` on ``agent`` here: (done, what happened or why it was refused, the
    details of its audit record or None: a refused local action is only answered, 409). The
    operator's own request commits the record before its answer (``server.oprecord``).
    ``cleared``: a resume whose principal's clear is on Redis already (``AgentRuntime.resume``)."""
    why = f"operator {order.by}: {order.reason or order.action}"
    try:
        if order.action == "resume":
            result = runtime.resume(agent, why, cleared=cleared)
        else:
            result = (runtime.suspend if order.action == "suspend" else runtime.terminate)(agent, why)
        done = True
    except InvalidTransition as e:
        result, done = e.message, False
    except AuditError as e:
        # the log broke since the operator's check (a resume awaits Redis first): the runtime
        # moved the agent before its own record raised. Done, and said so: the caller's record
        # is answered 503 action_unrecorded (restart_needed), not a bare 500 for an action done
        result, done = f"{order.action} done, its state change not recorded ({e.message})", True
    said = result if done else f"refused: {result}"
    doc: dict[str, Any] = {"agent": agent.id, "by": order.by, "reason": order.reason, "result": said}
    if order.via:
        doc["via"] = order.via
    return done, result, (doc if done or order.via else None)
