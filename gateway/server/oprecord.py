"""The audit record of an operator's action (admin API, dashboard), committed before the
operator is told it was done.

Each action asks first whether the log can record it (``operations.unrecordable``: 503
``audit_unavailable``, nothing done). A log that fails after that check (the disk filled
meanwhile, before the writer had failed) let the action go ahead, answered 200, and lost its
record, queued without a wait. Now the record goes through the gateway's ``events.Unsent`` (the
verifier's: ``Unsent.submit``), behind the records held there, so the chain keeps the order
things were done in, and its commit is waited for, ``RECORD_WAIT_S`` at most, before the answer.
The action cannot be undone in general, so a record that failed or did not commit in time is
answered 503 ``action_unrecorded`` with ``done: true``. One that failed stays held there
(``held: true``: re-sent by the approvals poll's sender, ``tasks._send_held``), written, stamped
``held_since_ns`` (when the action was done), once the log commits again; one not committed in
time stays queued in the writer (``pending: true``), written when the disk moves, and is held
only should its commit then fail. A log that broke for good (it refused the record, or an
emit nobody waited for was lost) commits nothing more in this process: the answer says so
(``held: false``, ``restart_needed: true``), the record is not sent to it again
(``events.refused_for_good``) and is logged at stop (``Unsent.abandon``). One dropped by the
held records' bound (at once with ``cap=0``; or as its commit failed, with ``cap`` more held
records failed in its batch behind it) is not held either (``dropped``): logged then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import ActionUnrecorded, AuditError, UnrecordedState
from gateway.events import COMMIT_WAIT_S, Event, Recording, Unsent
from gateway.server.unavailable import unavailable

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.audit.log import AuditLog

# as a call's record (``steps.audit``, ``events.COMMIT_WAIT_S``): a stalled disk does not hang
# the admin request; the commit stays in flight (the event queued once, written when it moves)
RECORD_WAIT_S = COMMIT_WAIT_S


async def record_action(
    gw: Gateway, kind: Event, details: Mapping[str, Any], *, principal: str, agent: str | None = None
) -> ActionUnrecorded | None:
    """Commit the record of an operator's action carried out: None once committed (or with no
    audit log, or ``audit.on_failure = "warn"``: emitted as before), else why not, the action
    done all the same (``with_record`` answers it)."""
    log, sink = gw.audit, gw.events
    if log is None or log.on_failure == "warn" or not isinstance(sink, Recording):
        sink.emit(kind, details, principal=principal, agent=agent)
        return None
    unsent = gw.verifier.unsent
    try:  # held (stamped with now, when it was done) until committed, behind older held ones
        commit = unsent.submit(sink, kind, details, principal=principal, agent=agent)
    except AuditError as e:  # refused before it was queued (broken since the check), or dropped
        return _unrecorded(kind, e.message, _where(unsent, log, details))
    done, _ = await asyncio.wait({commit}, timeout=RECORD_WAIT_S)  # never cancels the commit
    if not done or commit.cancelled():
        # still queued in the writer (held should its commit fail later), or cancelled (the
        # event stays in the writer's queue): unless the stop let it go (``Unsent.abandon``,
        # logged there), when nothing holds it should the disk not move
        why = (
            "its commit was cancelled (the gateway is stopping)"
            if done
            else f"not committed within {RECORD_WAIT_S:g} s (a stalled disk)"
        )
        return _unrecorded(kind, why, "stopped" if unsent.stopped else "pending")
    err = commit.exception()
    if err is None:
        return None
    why = err.message if isinstance(err, AuditError) else repr(err)
    return _unrecorded(kind, why, _where(unsent, log, details))


def _where(unsent: Unsent, log: AuditLog, details: Mapping[str, Any]) -> UnrecordedState:
    """Where a record refused or failed is, in the ``unsent`` it was submitted to: dropped by
    the bound (records held behind it, failed in its batch or kept since, past ``cap``: the
    oldest dropped, this one, answered ``held`` before), else held, never sent again when the
    log is broken for good. (A point in time: one held may still be dropped later, logged.)"""
    if unsent.stopped:  # let go by the stop (``Unsent.abandon``, logged there), not by the bound
        return "stopped"
    if not unsent.holds(details):
        return "dropped"
    return "broken" if log.unwritable() is not None else "held"


# THE definition of each state's answer: the 503's one flag that says it (a dropped record has
# none: not held, not queued, no restart mends it) and where the message says the record is
_SAID: dict[UnrecordedState, tuple[str | None, str]] = {
    "held": ("held", "it is held and written once the audit log commits again"),
    "pending": ("pending", "it stays queued and is written when the disk moves (held, should that fail)"),
    "broken": (
        "restart_needed",
        "the audit log refuses for good, a restart is needed: it is logged when the gateway stops",
    ),
    "dropped": (None, "it was dropped, over the bound of records held for the log (logged)"),
    "stopped": (None, "the gateway stopped first: it is written to the gateway's own log"),
}
# the body's flags, every one in every 503 (the README's and OpenAPI's wire format)
_FLAGS: tuple[str, ...] = tuple(flag for flag, _ in _SAID.values() if flag is not None)


def _unrecorded(kind: Event, why: str, state: UnrecordedState) -> ActionUnrecorded:
    where = _SAID[state][1]
    return ActionUnrecorded(
        f"done, but its audit record ({kind}) is not committed ({why}): {where}; see /readyz", state=state
    )


def with_record(
    unrec: ActionUnrecorded | None, status: int, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` when the record was committed, else the one 503 ``action_unrecorded``
    with what was done in it: ``done``, and the one flag of its state true (``_SAID``):
    ``held`` (sent again until committed), ``pending`` (still queued in a stalled writer) or
    ``restart_needed`` (the log is broken for good); none when it was dropped."""
    if unrec is None:
        return status, body
    mine = _SAID[unrec.state][0]
    said = {"done": True} | {flag: flag == mine for flag in _FLAGS}
    return 503, {**body, **unavailable("audit", unrec), **said}
