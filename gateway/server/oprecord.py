"""The audit record of an operator's action (admin API, dashboard), committed before the
operator is told it was done.

Each action asks first whether the log can record it (``operations.unrecordable``: 503
``audit_unavailable``, nothing done). A log that fails after that check (the disk filled
meanwhile, before the writer had failed) let the action go ahead, answered 200, and lost its
record, queued without a wait. Now the record is committed (``events.Recording.submit``) and
waited for, ``RECORD_WAIT_S`` at most, before the answer. The action cannot be undone in
general, so a record that failed or did not commit in time is answered 503
``action_unrecorded`` with ``done: true``. One that failed is held in the gateway's
``events.Unsent`` (the verifier's, re-sent by the approvals poll's sender,
``tasks._send_held``: ``held: true``), written, stamped ``held_since_ns``, once the log commits
again; one not committed in time stays queued in the writer (``pending: true``), written when
the disk moves, and is held only should its commit then fail. A log that broke for good (an
emit nobody waited for was lost) commits nothing more in this process: the held record is
logged at stop (``Unsent.abandon``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import ActionUnrecorded, AuditError
from gateway.events import COMMIT_WAIT_S, Event, Recording

if TYPE_CHECKING:
    from gateway.app import Gateway

_logger = logging.getLogger("symbi.server.oprecord")

# as a call's record (``steps.audit``, ``events.COMMIT_WAIT_S``): a stalled disk does not hang
# the admin request; the commit stays in flight (the event queued once, written when it moves)
RECORD_WAIT_S = COMMIT_WAIT_S


async def record_action(
    gw: Gateway, kind: Event, details: Mapping[str, Any], *, principal: str, agent: str | None = None
) -> dict[str, Any] | None:
    """Commit the record of an operator's action carried out: None once committed (or with no
    audit log, or ``audit.on_failure = "warn"``: emitted as before), else the 503 body saying
    the action WAS done and its record is held or still queued (``unrecorded``)."""
    log, sink = gw.audit, gw.events
    if log is None or log.on_failure == "warn" or not isinstance(sink, Recording):
        sink.emit(kind, details, principal=principal, agent=agent)
        return None
    held = gw.verifier.unsent
    # whom the record is of, and when it was done (just now), should it be held
    keep = functools.partial(
        held.keep, kind, details, refused=True, since_ns=time.time_ns(), principal=principal, agent=agent
    )
    try:
        commit = sink.submit(kind, details, principal=principal, agent=agent)
    except AuditError as e:  # refused before it was queued (broken since the check, closed)
        keep()
        return unrecorded(kind, e)
    # held on failure whenever it comes: after the answer too (a stalled commit that fails later)
    commit.add_done_callback(functools.partial(_hold_if_failed, kind, keep))
    done, _ = await asyncio.wait({commit}, timeout=RECORD_WAIT_S)  # never cancels the commit
    if not done:  # still queued in the writer, not held: held should its commit fail later
        return unrecorded(
            kind, AuditError(f"not committed within {RECORD_WAIT_S:g} s (a stalled disk)"), held=False
        )
    if commit.cancelled():  # the gateway stopping: its event stays in the writer's queue
        return unrecorded(kind, AuditError("its commit was cancelled (the gateway is stopping)"), held=False)
    err = commit.exception()
    if err is None:
        return None
    return unrecorded(kind, err if isinstance(err, AuditError) else AuditError(repr(err)))


def unrecorded(kind: Event, err: AuditError, *, held: bool = True) -> dict[str, Any]:
    """The 503 body of an action done whose record ``kind`` is not committed: ``held`` (sent
    again until committed), or still queued in a stalled writer (``pending``)."""
    where = (
        "it is held and written once the audit log commits again"
        if held
        else "it stays queued and is written when the disk moves (held, should that fail)"
    )
    why = f"done, but its audit record ({kind}) is not committed ({err.message}): {where}; see /readyz"
    return {
        "error": "unavailable",
        "component": "audit",
        "code": ActionUnrecorded.code,
        "done": True,
        "held": held,
        "pending": not held,
        "reason": why,
    }


def with_record(
    unrec: dict[str, Any] | None, status: int, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` when the record was committed, else 503 with what was done in it."""
    return (status, body) if unrec is None else (503, {**body, **unrec})


def _hold_if_failed(kind: Event, keep: Callable[[], None], commit: asyncio.Future[int]) -> None:
    # a cancelled commit (the gateway stopping) left its event in the writer's queue: not held
    if commit.cancelled() or (err := commit.exception()) is None:
        return
    _logger.error("%s not committed (the action was done): held until the log commits it: %s", kind, err)
    keep()  # sent late: stamped with the action's time
