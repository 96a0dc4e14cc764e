"""What the operator reads and does through the admin API (``gateway.server.admin``) and the
dashboard (``gateway.server.dashboard``) alike: the audit log (query, verify, writable), the
policy engine's status, the tool and upstream rows, and an agent's suspend / resume / terminate.

Each reads the running ``Gateway`` from the HTTP state; none knows about requests or responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from gateway.apikeys import has_live_key
from gateway.errors import AuditError, HoldsFull, NotStarted, StateUnavailable
from gateway.events import Event
from gateway.runtime.identity import is_agent_id
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.orders import OPERATOR_EVENTS, Order, carry_out
from gateway.server.oprecord import record_action, with_record
from gateway.server.pending import hosted_pending, unreachable, withdraw_pending, withdrawn_answer
from gateway.server.unavailable import unavailable
from gateway.state.leases import process_name

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.runtime.agents import Agent
    from gateway.runtime.core import AgentRuntime
    from gateway.server.http import HttpState

_logger = logging.getLogger("symbi.server.operations")
_QUERY_FLUSH_S = 5.0  # a query waits this long at most for what was emitted before it


def audit_log(state: HttpState) -> AuditLog | None:
    """The gateway's audit log, or None when auditing is off (or the gateway not started)."""
    return state.gateway.audit if state.gateway is not None else None


def audit_verify(log: AuditLog) -> dict[str, Any]:
    """Verify the whole chain (blocking: run it in a thread). ``ok`` says whether it is intact."""
    return log.verify().as_dict()


def audit_query(log: AuditLog, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Matching events in sequence order, those emitted before the query included (an operator's
    action, then a query for its event: its fire-and-forget event may still be held for the
    linger). Blocking: run it in a thread."""
    from gateway.audit import store

    try:
        log.flush(timeout=_QUERY_FLUSH_S)
    except AuditError:
        pass  # a writer that cannot commit: what is on disk is still the answer (/readyz says why)
    conn = store.open_reader(log.path)
    try:
        return [r.as_dict() for r in store.query(conn, **filters)]
    finally:
        conn.close()


def audit_writable(log: AuditLog) -> bool:
    """Whether events can be recorded right now (any failure to tell is "no")."""
    try:
        log.ensure_writable()
        return True
    except Exception:  # noqa: BLE001 - fail closed: not writable
        return False


def policy_status(state: HttpState) -> dict[str, Any] | None:
    """The policy engine's status (``loaded`` at least), or None when there is no engine."""
    eng = state.gateway.policy if state.gateway is not None else None
    if eng is None:
        return None
    try:
        return eng.status()
    except Exception as e:  # noqa: BLE001 - fail closed: not loaded, with the reason
        return {"loaded": False, "error": f"{type(e).__name__}: {e}"}


def tool_rows(state: HttpState) -> list[dict[str, Any]]:
    gw = state.gateway
    if gw is None:
        return []
    rows = []
    for name, entry in sorted(gw.catalog.tools.items()):
        info = entry.info
        rows.append(
            {
                "name": name,
                "original_name": info.original_name,
                "upstream": info.upstream,
                "description": (entry.tool.description or "")[:500],
                "verification": info.verification,
                "key_fingerprint": info.key_fingerprint,
                "definition_hash": info.definition_hash,
                "code_tool": info.code_tool,
                "screening": info.screening.as_input(),
            }
        )
    return rows


def upstream_rows(state: HttpState) -> list[dict[str, Any]]:
    gw = state.gateway
    if gw is None:
        return []
    return [
        {
            "name": name,
            "state": up.state,
            "transport": up.transport,
            "restarts": up.restarts,
            "last_error": up.last_error,
            "tools": len(up.listing.tools),
        }
        for name, up in sorted(gw.upstreams.items())
    ]


async def act_on_agent(
    state: HttpState, ref: str, action: str, who: str, reason: str
) -> tuple[int, dict[str, Any]]:
    """An operator's ``action`` on agent ``ref``, wherever it runs: a hosted agent whose lease
    another process holds is passed to it (``pass_hosted_action``), any other is acted on here
    (``agent_action``). The admin API and the dashboard both act through this."""
    gw = state.gateway
    elsewhere = hosted_elsewhere(state, ref)
    agent = gw.runtime.agents.resolve(ref) if gw is not None else None
    pending = hosted_pending(state, ref, action)  # a hosted agent never run here: its start
    # nothing here to act on, nor elsewhere: 404 before the log's check (nothing to refuse)
    if (
        gw is not None
        and elsewhere is None
        and agent is None
        and pending is None
        and not shared_sessions(state)
    ):
        return 404, {"error": "not_found", "reason": not_here(state, ref)}
    refused = unrecordable(audit_log(state), action)
    if refused is not None:
        return refused
    if elsewhere is not None:
        return await pass_hosted_action(state, elsewhere, action, who, reason)
    if pending is not None and gw is not None and gw.hosted is not None:
        withdrawn = await withdraw_pending(gw, gw.hosted, pending, who, reason)
        if withdrawn is not None:
            return withdrawn
        agent = gw.runtime.agents.resolve(ref)  # (its round trip: a run may have started)
    if shared_sessions(state) and agent is None:
        return await pass_session_action(state, ref, action, who, reason)
    cleared = False
    try:  # before a resume, its principal's hold cleared on Redis (``AgentRuntime.clear_first``:
        # a refusal, 409, is decided before anything is written)
        if action == "resume" and gw is not None and agent is not None:
            cleared = await gw.runtime.clear_first(agent)
    except StateUnavailable as e:
        return 503, unavailable("state", StateUnavailable(e.diagnostics()))
    # the agent resolved before the clear's round trip is the one acted on: resolved again after
    # it, a ref grown ambiguous meanwhile (an id prefix or a name another agent now matches) was
    # answered 200 "Terminated" for an agent still suspended, its principal's others too (session 42)
    status, body, record = agent_action(state, ref, action, who, reason, agent=agent, cleared=cleared)
    unrec = None
    if record is not None and gw is not None:  # committed before the answer (``oprecord``)
        unrec = await record_action(gw, OPERATOR_EVENTS[action], record, principal=who, agent=record["agent"])
    if status == 200 and gw is not None and agent is not None and action in ("suspend", "resume"):
        await _shared_holds(state, body)  # its principal's suspension, on every replica
        unheld = _unheld(gw.runtime, agent, body) if action == "suspend" else None
        if unheld is not None and unrec is None:
            return 507, unheld
        if unheld is not None:  # the 503 (done, unrecorded) says its principal is not held too
            body = {**body, "principal_held": False, "holds_full": unheld["reason"]}
    return with_record(unrec, status, body)


def unrecordable(log: AuditLog | None, action: str) -> tuple[int, dict[str, Any]] | None:
    """503 ``audit_unavailable`` for an operator's ``action`` ``log`` cannot record now (broken
    or closed, ``audit.on_failure = "deny"``): nothing is done, as a call is refused before it
    reaches its upstream. It was carried out and its record then raised: a 500 for a suspension
    or resume that had happened (session 42's review). None: it can (or auditing is off; with
    ``on_failure = "warn"`` the check is silent, that failure is logged). Every operator action
    asks this, the tool approval too."""
    if log is None:
        return None
    try:
        log.ensure_writable()
    except AuditError as e:
        why = f"nothing was done: the audit log cannot record the {action} ({e}); see /readyz"
        return 503, unavailable("audit", AuditError(why))
    return None


def _unheld(rt: AgentRuntime, agent: Agent, body: dict[str, Any]) -> dict[str, Any] | None:
    """The 507 ``holds_full`` body when session agent ``agent`` is suspended but its
    principal is not held (``limit`` principals held here) or held in this process only (Redis
    refused it): answered 200 before, as if the principal's other sessions were refused
    (session 42). The agent stays suspended (fail closed); the body says so."""
    if agent.hosted or not agent.owner:
        return None
    if agent.state is not AgentState.SUSPENDED and agent.suspend_pending is None:
        return None
    if not rt.holds.holding(agent.owner):
        where = "is not held: its other sessions are not refused"
    elif agent.owner in rt.holds.unshared:
        where = "is held in this process only (the other replicas let it in)"
    else:
        return None
    limit = rt.holds.bound_of(agent.owner)  # Redis's for a hold it refused, not this process's
    why = (
        f"agent {agent.id} is suspended, but {limit} principals are suspended already: its "
        f"principal {agent.owner} {where}; clear suspensions no longer needed (symbi agents "
        f"suspended), then symbi agents suspend --principal {agent.owner}"
    )
    return {**body, **_holds_full(why, limit), "principal_held": False}


def _holds_full(reason: str, limit: int) -> dict[str, Any]:
    """A 507 ``holds_full`` body: a suspension past ``limit`` held principals."""
    return {"error": "holds_full", "code": HoldsFull.code, "reason": reason, "limit": limit}


async def _shared_holds(state: HttpState, body: dict[str, Any]) -> bool:
    """Wait (a state round trip at most) for this process's changes of the suspended
    principals to be on Redis; when they are not, ``body`` says so. Whether they are."""
    gw = state.gateway
    assert gw is not None
    if await gw.runtime.holds.flush(state.config.state.timeout_s):
        return True
    body["shared"] = (
        "pending: the shared state (Redis) does not have it yet; this process acts on it now and "
        "writes it when Redis answers, the other replicas act on it then"
    )
    return False


PRINCIPAL_ACTIONS = ("suspend", "resume")
PRINCIPAL_MAX = 512


def principal_rows(state: HttpState) -> list[dict[str, Any]] | None:
    """The suspended principals (qualified id, reason, the agent or operator, when), oldest
    first; None when the gateway has not started."""
    gw = state.gateway
    if gw is None:
        return None
    return [h.as_json() for h in gw.runtime.holds.all()]


async def key_unknown(state: HttpState, principal: str) -> str | None:
    """Why ``key:NAME`` names no caller of this gateway (its key store has no live API key of
    NAME), or None (another kind, or a key of it exists). ``key:alcie`` (a typo of alice) was
    answered "suspended" and held no one (session 42). A store that cannot be read (down, a
    malformed key file) refuses nothing (logged): the suspension is the safe side, and a resume
    of a hold skips this."""
    kind, _, name = principal.partition(":")
    if kind != "key":
        return None
    keys = state.auth.keys
    try:  # PostgreSQL's store is a round trip: off the event loop
        records = (
            await anyio.to_thread.run_sync(keys.records) if state.auth.keys_over_network else keys.records()
        )
    except Exception as e:  # noqa: BLE001 - any store that cannot be read: the hold goes ahead
        # (a malformed record of the key file was a 500 here, KeyError or TypeError; session 42)
        _logger.warning(
            "principal %s: the API keys could not be read to check it exists (%s: %s); suspended unchecked",
            principal,
            type(e).__name__,
            e,
        )
        return None
    if has_live_key(records, name):
        return None
    return f"principal {principal[:80]!r}: no live API key of {name[:80]!r} here (symbi keys list)"


async def act_on_principal(
    state: HttpState, principal: str, action: str, who: str, reason: str
) -> tuple[int, dict[str, Any]]:
    """An operator suspends ``principal`` (qualified: every session agent of it is refused from
    its next call, on every replica) or clears its suspension (its suspended session agents here
    resume at once; the other replicas' when they see it cleared). 200 when done here and on the
    shared state, 202 when Redis does not have it yet (retried), 404 when resuming a principal
    that is not suspended."""
    gw = state.gateway
    if gw is None:
        return 503, unavailable("agents", NotStarted())
    refused = unrecordable(gw.audit, action)
    if refused is not None:
        return refused
    rt = gw.runtime
    resumed: list[str] = []
    if action == "suspend":
        try:
            new = rt.suspend_principal(principal, reason or f"suspended by operator {who}", who)
        except HoldsFull as e:  # refused, never made room for by un-suspending the oldest
            return 507, _holds_full(e.diagnostics(), rt.holds.limit)
        result = "suspended" if new else "already suspended"
    else:
        try:  # on Redis first: a clear only queued in memory was lost with the process
            held = await rt.holds.clear(principal, state.config.state.timeout_s)
        except StateUnavailable as e:
            return 503, unavailable("state", StateUnavailable(e.diagnostics()))
        resumed = rt.release(principal, f"operator {who}: {reason or 'resume'}")
        if held is None and not resumed and rt.holds.board is None:
            return 404, {"error": "not_found", "reason": f"principal {principal!r} is not suspended"}
        result = "resumed" if held is not None or resumed else "cleared on the shared state (not held here)"
    body: dict[str, Any] = {"principal": principal, "result": result, "resumed_here": resumed}
    unrec = await record_action(  # committed before the answer (``oprecord``)
        gw,
        Event.PRINCIPAL_SUSPEND_REQUESTED if action == "suspend" else Event.PRINCIPAL_RESUME_REQUESTED,
        {"principal": principal, "by": who, "reason": reason, "result": result, "resumed": resumed},
        principal=who,
    )
    shared = await _shared_holds(state, body)
    if unrec is not None:  # done, its record held: said before the rest (and where it holds)
        if action == "suspend" and principal in rt.holds.unshared:
            body["holds_full"] = "suspended in this process only: the shared state refused it"
        return with_record(unrec, 200, body)
    if action == "suspend" and principal in rt.holds.unshared:  # Redis refused it: not "suspended"
        limit = rt.holds.bound_of(principal)  # Redis's, not this process's
        why = (
            f"the shared state holds {limit} suspended principals: {principal} is suspended in "
            "this process only (the other replicas let it in); clear suspensions no longer "
            "needed (symbi agents suspended)"
        )
        return 507, _holds_full(why, limit)
    return (200 if shared else 202), body


def agent_action(
    state: HttpState,
    ref: str,
    action: str,
    who: str,
    reason: str,
    *,
    agent: Agent | None = None,
    cleared: bool = False,
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """An operator's suspend / resume / terminate of agent ``ref`` (id, name or id prefix) in
    this process: (HTTP status, JSON body, its audit record's details: the caller commits it
    before answering, ``oprecord``; None: nothing to record). ``agent``: the one ``ref`` named, resolved already
    (else resolved here). ``cleared``: a resume whose principal's clear is on Redis already
    (``AgentRuntime.clear_first``): done on ``agent`` whatever it became, its real state answered."""
    gw = state.gateway
    if gw is None:
        return 503, unavailable("agents", NotStarted()), None
    if agent is None:
        agent = gw.runtime.agents.resolve(ref)
    if agent is None:
        return 404, {"error": "not_found", "reason": not_here(state, ref)}, None
    order = Order(action=action, by=who, reason=reason, via="", at=time.time())
    done, result, record = carry_out(gw.runtime, agent, order, cleared=cleared)
    if not done:
        return 409, {"error": "invalid_transition", "reason": result}, record
    return 200, {"agent": agent.id, "result": result, "state": agent.state.value}, record


async def pass_session_action(
    state: HttpState, agent_id: str, action: str, who: str, reason: str
) -> tuple[int, dict[str, Any]]:
    """``action`` on session agent ``agent_id``, unknown here: passed through Redis to the
    process holding its session (202, naming it); 404 when no process holds an agent of that
    id; 503 ``state_unavailable`` when Redis cannot be reached (refused, never dropped)."""
    gw = state.gateway
    assert gw is not None and gw.state is not None and gw.state.sessions is not None
    if not is_agent_id(agent_id):  # a name or an id prefix names an agent of this process only
        why = f"no agent {agent_id!r} in this process; an agent of another process is named by its full id"
        return 404, {"error": "not_found", "reason": why}
    try:
        holders = await gw.state.sessions.pass_order(agent_id, action, who, reason)
    except (RedisError, OSError) as e:
        why = f"the shared state (Redis) could not be reached to pass the {action} on: {e}"
        return 503, unavailable("state", StateUnavailable(why))
    if not holders:
        why = (
            f"no process holds an agent {agent_id!r}: not in this process "
            f"({process_name(state.config.data_dir)}) nor, as a session agent by its full id, in any "
            "other on the shared state (it ended, or never existed)"
        )
        return 404, {"error": "not_found", "reason": why}
    names = sorted(holders)
    result = f"{action} passed to the process holding its session ({', '.join(names)})"
    unrec = await record_action(
        gw,
        OPERATOR_EVENTS[action],
        {"agent": agent_id, "by": who, "reason": reason, "result": result},
        principal=who,
        agent=agent_id,
    )
    first = holders[names[0]]
    body = {"agent": agent_id, "result": result, "holder": names[0], "state": first.get("state")}
    return with_record(unrec, 202, body)


def shared_sessions(state: HttpState) -> bool:
    """Whether session agents are on the shared board (``[state] redis_url``): an action on one
    unknown here is passed to the process holding it (``pass_session_action``)."""
    gw = state.gateway
    return gw is not None and gw.state is not None and gw.state.sessions is not None


def not_here(state: HttpState, ref: str) -> str:
    """Why ``ref`` is unknown here."""
    return f"no agent {ref!r}"


def hosted_elsewhere(state: HttpState, ref: str) -> str | None:
    """The hosted agent ``ref`` names (its name, or the id its holder last wrote) when its lease
    is held by another process (or by none): its action goes through ``pass_hosted_action``."""
    gw = state.gateway
    leased = gw.hosted.leased if gw is not None and gw.hosted is not None else None
    if leased is None:
        return None
    ac = state.config.agents.get(ref)
    name = ref if ac is not None and ac.enabled else None
    if name is None:
        ids = {(doc or {}).get("agent"): n for n, doc in leased.seen.items()}
        name = ids.get(ref) if ref else None
    return None if name is None or leased.holds(name) else name


async def pass_hosted_action(
    state: HttpState, name: str, action: str, who: str, reason: str
) -> tuple[int, dict[str, Any]]:
    """``action`` on hosted agent ``name``, whose lease another process holds: passed to it
    through Redis (202, naming the holder); 409 when no process holds it; 503
    ``state_unavailable`` when Redis cannot be reached (refused, never dropped). A terminate
    first withdraws a start not taken yet: one withdrawn is said in the answer (200 when no
    process holds the lease; ``withdrawn``, also in a 503) and recorded."""
    gw = state.gateway
    assert gw is not None and gw.hosted is not None and gw.hosted.leased is not None
    withdrawn = False
    try:
        if action == "terminate":
            withdrawn = await gw.hosted.leased.withdraw_start(name)
        seen = await gw.hosted.leased.pass_order(name, action, who, reason)
    except (RedisError, OSError) as e:
        seen = gw.hosted.leased.seen.get(name)
        return await unreachable(gw, name, who, reason, f"pass the {action} on", e, withdrawn, seen)
    if seen is None and withdrawn:
        return await withdrawn_answer(
            gw, name, who, reason, 200, {"result": "no process holds its lease"}, None
        )
    if seen is None:
        why = (
            f"no process holds hosted agent {name!r}'s lease: it runs nowhere now (not started, "
            "or its holder stopped; another process takes the lease within its expiry)"
        )
        return 409, {"error": "not_running", "reason": why}
    result = f"{action} passed to the process holding its lease ({seen.get('holder')})"
    result += "; a pending start withdrawn" if withdrawn else ""
    unrec = await record_action(
        gw,
        OPERATOR_EVENTS[action],
        {"agent": seen.get("agent"), "name": name, "by": who, "reason": reason, "result": result},
        principal=who,
        agent=seen.get("agent"),  # the id the holder last wrote (None before its first run)
    )
    body = {"agent": seen.get("agent") or name, "result": result, "holder": seen.get("holder")}
    body["state"] = seen.get("state")
    if action == "terminate":  # only a terminate withdraws a start
        body["withdrawn"] = withdrawn
    return with_record(unrec, 202, body)
