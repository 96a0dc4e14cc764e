"""What the operator reads and does through the admin API (``gateway.server.admin``) and the
dashboard (``gateway.server.dashboard``) alike: the audit log (query, verify, writable), the
policy engine's status, the tool and upstream rows, and an agent's suspend / resume / terminate.

Each reads the running ``Gateway`` from the HTTP state; none knows about requests or responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.errors import AuditError, InvalidTransition
from gateway.events import Event

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.server.http import HttpState

_QUERY_FLUSH_S = 5.0  # a query waits this long at most for what was emitted before it


def audit_log(state: HttpState) -> AuditLog | None:
    """The gateway's audit log, or None when auditing is off (or the gateway not started)."""
    return state.gateway.audit if state.gateway is not None else None


def audit_verify(log: AuditLog) -> dict[str, Any]:
    """Verify the whole chain (blocking: run it in a thread). ``ok`` says whether it is intact."""
    return log.verify().as_dict()


_OPERATOR_EVENTS = {
    "suspend": Event.AGENT_SUSPEND_REQUESTED,
    "resume": Event.AGENT_RESUME_REQUESTED,
    "terminate": Event.AGENT_TERMINATE_REQUESTED,
}


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


AGENT_ACTIONS = ("suspend", "resume", "terminate")


def agent_action(
    state: HttpState, ref: str, action: str, who: str, reason: str
) -> tuple[int, dict[str, Any]]:
    """An operator's suspend / resume / terminate of agent ``ref`` (id, name or id prefix):
    (HTTP status, JSON body). The admin API and the dashboard both act through this."""
    gw = state.gateway
    if gw is None:
        return 503, {"error": "unavailable", "component": "agents", "reason": "gateway not started"}
    agent = gw.runtime.agents.resolve(ref)
    if agent is None:
        return 404, {"error": "not_found", "reason": f"no agent {ref!r}"}
    rt = gw.runtime
    try:
        result = {"suspend": rt.suspend, "resume": rt.resume, "terminate": rt.terminate}[action](
            agent, f"operator {who}: {reason or action}"
        )
    except InvalidTransition as e:
        return 409, {"error": "invalid_transition", "reason": e.message}
    gw.events.emit(
        _OPERATOR_EVENTS[action],
        {"agent": agent.id, "by": who, "reason": reason, "result": result},
        principal=who,
        agent=agent.id,
    )
    return 200, {"agent": agent.id, "result": result, "state": agent.state.value}
