"""The admin REST API under ``/api`` (admin role only) and its OpenAPI document.

Handlers are thin: they read the running ``Gateway`` and the HTTP state, nothing more.
The auth middleware has already refused non-admins with 403 before a handler runs.

Components the config turned off (``gw.audit``, ``gw.policy`` are None) answer 503 with a
reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import ApprovalError, InvalidTransition
from gateway.events import Event
from gateway.runtime.status import agent_row, agent_rows, components, get_system_status, overall
from gateway.server.approvals import approve_discovered, approve_tool, discovered_rows, tool_diff
from gateway.server.footprint import http_footprint
from gateway.server.openapi import OPENAPI

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.server.http import HttpState


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
_QUERY_KEYS = {"principal", "tool", "type", "decision", "since_ns", "until_ns", "limit"}


def audit_filters(params: Mapping[str, str], default_limit: int | None) -> dict[str, Any]:
    """Validated ``gateway.audit.store.query`` filters from query parameters (ValueError if bad)."""
    unknown = set(params) - _QUERY_KEYS
    if unknown:
        raise ValueError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"limit": default_limit}
    for key in ("principal", "tool", "decision"):
        if key in params:
            out[key] = params[key]
    if out.get("decision") not in (None, "allow", "deny"):
        raise ValueError("decision must be allow or deny")
    if "type" in params:
        out["types"] = tuple(t for t in params["type"].split(",") if t)
    for key in ("since_ns", "until_ns", "limit"):
        if key in params:
            out[key] = int(params[key])
    for key in ("since_ns", "until_ns"):
        if key in out and not 0 <= out[key] < 2**63:  # SQLite INTEGER range (found by schemathesis)
            raise ValueError(f"{key} must be from 0 to 2**63-1")
    if out["limit"] is not None and not 1 <= out["limit"] <= 100_000:
        raise ValueError("limit must be from 1 to 100000")
    return out


def audit_query(log: Any, filters: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Matching events in sequence order (blocking: run it in a thread)."""
    from gateway.audit import store

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


def _unavailable(what: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": "unavailable", "component": what, "reason": reason}, status_code=503)


def _err(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


def _refused(e: ApprovalError) -> JSONResponse:
    if e.status == 503:
        return _unavailable("verification", e.message)
    return _err(e.status, "not_found" if e.status == 404 else "conflict", e.message)


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


def _limit(request: Request, default: int = 50, most: int = 1000) -> int | None:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if 1 <= n <= most else None


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


def _bind_action(handler: Any, action: str) -> Any:
    async def run(request: Request) -> Response:
        return await handler(request, action)  # type: ignore[no-any-return]

    return run


async def _reason(request: Request) -> str | None:
    """The optional ``reason`` of an agent action ("" when no body); None when malformed."""
    body = await request.body()
    if not body.strip():
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("reason", ""), str):
        return None
    return str(doc.get("reason", ""))[:500]


def admin_routes(state: HttpState) -> list[Route]:
    """The ``/api`` routes (mounted behind the admin check)."""

    async def tools(request: Request) -> Response:
        return JSONResponse({"tools": tool_rows(state)})

    async def tool_diff_view(request: Request) -> Response:
        try:
            # off the event loop: with [state] postgres_url the tool state is a round trip
            return JSONResponse(
                await anyio.to_thread.run_sync(tool_diff, state.gateway, request.path_params["name"])
            )
        except ApprovalError as e:
            return _refused(e)

    async def tool_approve(request: Request) -> Response:
        try:
            done = await approve_tool(
                state.gateway, request.path_params["name"], request.scope["symbi.principal"]
            )
        except ApprovalError as e:
            return _refused(e)
        return JSONResponse(done)

    async def upstreams(request: Request) -> Response:
        return JSONResponse({"upstreams": upstream_rows(state)})

    async def discovered(request: Request) -> Response:
        return JSONResponse({"servers": await anyio.to_thread.run_sync(discovered_rows, state.gateway)})

    async def discovered_approve(request: Request) -> Response:
        try:
            done = await approve_discovered(
                state.gateway, request.path_params["name"], request.scope["symbi.principal"]
            )
        except ApprovalError as e:
            return _refused(e)
        return JSONResponse(done)

    async def restart(request: Request) -> Response:
        name = request.path_params["name"]
        gw = state.gateway
        up = gw.upstreams.get(name) if gw is not None else None
        if up is None:
            return _err(404, "not_found", f"no upstream named {name!r}")
        await up.restart()
        state.gateway.events.emit(Event.UPSTREAM_RESTART_REQUESTED, {"upstream": name})  # type: ignore[union-attr]
        return JSONResponse({"upstream": name, "restarting": True}, status_code=202)

    async def sessions(request: Request) -> Response:
        return JSONResponse({"max_sessions": state.config.http.max_sessions, "sessions": state.sessions()})

    async def footprint(request: Request) -> Response:
        return JSONResponse(http_footprint(state))

    async def calls(request: Request) -> Response:
        n = _limit(request)
        if n is None:
            return _err(400, "bad_request", "limit must be an integer from 1 to 1000")
        return JSONResponse({"calls": [c.as_json() for c in state.recent.latest(n)]})

    async def audit_recent(request: Request) -> Response:
        log = audit_log(state)
        if log is None:
            return _unavailable("audit", "the audit log is not enabled in this gateway")
        n = _limit(request)
        if n is None:
            return _err(400, "bad_request", "limit must be an integer from 1 to 1000")
        events = await anyio.to_thread.run_sync(log.recent, n)
        return JSONResponse({"events": events})

    async def audit_query_view(request: Request) -> Response:
        log = audit_log(state)
        if log is None:
            return _unavailable("audit", "the audit log is not enabled in this gateway")
        try:
            filters = audit_filters(request.query_params, default_limit=1000)
        except ValueError as e:
            return _err(400, "bad_request", str(e))
        return JSONResponse({"events": await anyio.to_thread.run_sync(audit_query, log, filters)})

    async def audit_export(request: Request) -> Response:
        log = audit_log(state)
        if log is None:
            return _unavailable("audit", "the audit log is not enabled in this gateway")
        try:
            filters = audit_filters(request.query_params, default_limit=None)
        except ValueError as e:
            return _err(400, "bad_request", str(e))
        rows = await anyio.to_thread.run_sync(audit_query, log, filters)
        body = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/x-ndjson")

    async def audit_verify_view(request: Request) -> Response:
        log = audit_log(state)
        if log is None:
            return _unavailable("audit", "the audit log is not enabled in this gateway")
        try:
            result = await anyio.to_thread.run_sync(audit_verify, log)
        except Exception as e:  # noqa: BLE001 - an unreadable log is "not verified", said plainly
            return _unavailable("audit", f"verification could not run: {type(e).__name__}: {e}")
        return JSONResponse(result)

    async def pins(request: Request) -> Response:
        gw = state.gateway
        pins = await anyio.to_thread.run_sync(gw.verifier.pins.pins) if gw is not None else []
        rows = [p.to_dict() for p in pins]
        return JSONResponse({"pins": rows})

    async def policy_status_view(request: Request) -> Response:
        doc = policy_status(state)
        if doc is None:
            return _unavailable("policy", "the policy engine is not enabled in this gateway")
        return JSONResponse(doc)

    async def policy_reload(request: Request) -> Response:
        eng = state.gateway.policy if state.gateway is not None else None
        if eng is None:
            return _unavailable("policy", "the policy engine is not enabled in this gateway")
        if not eng.reloadable:
            return _err(409, "conflict", "this policy engine is not reloaded by the gateway (remote OPA)")
        # a policy that does not parse or fails its tests is refused; the old one stays in force
        ok = await anyio.to_thread.run_sync(eng.reload)
        return JSONResponse({"reloaded": ok, **(policy_status(state) or {})}, status_code=200 if ok else 422)

    # -- agents and status (gateway.runtime) ----------------------------------------------------

    def _agent(request: Request) -> Any:
        gw = state.gateway
        return gw.runtime.agents.resolve(request.path_params["id"]) if gw is not None else None

    async def agents(request: Request) -> Response:
        gw = state.gateway
        if gw is None:
            return _unavailable("agents", "gateway not started")
        return JSONResponse({"agents": agent_rows(gw.runtime)})

    async def agent_view(request: Request) -> Response:
        agent = _agent(request)
        if agent is None:
            return _err(404, "not_found", f"no agent {request.path_params['id']!r}")
        return JSONResponse(agent_row(state.gateway.runtime, agent))  # type: ignore[union-attr]

    async def agent_act(request: Request, action: str) -> Response:
        if _agent(request) is None:
            return _err(404, "not_found", f"no agent {request.path_params['id']!r}")
        reason = await _reason(request)
        if reason is None:
            return _err(400, "bad_request", 'body must be JSON {"reason": "..."} (or empty)')
        status, body = agent_action(
            state, request.path_params["id"], action, request.scope["symbi.principal"].id, reason
        )
        return JSONResponse(body, status_code=status)

    async def agent_run(request: Request) -> Response:
        gw = state.gateway
        name = request.path_params["id"]
        if gw is None or gw.hosted is None or name not in state.config.agents:
            return _err(404, "not_found", f"no hosted agent {name!r} ([agents.{name}])")
        result = gw.hosted.request_start(name)
        who = request.scope["symbi.principal"].id
        gw.events.emit(Event.AGENT_RUN_REQUESTED, {"name": name, "by": who, "result": result}, principal=who)
        agent = gw.runtime.agents.by_name(name)
        return JSONResponse(
            {
                "agent": agent.id if agent else name,
                "result": result,
                "state": agent.state.value if agent else "Initializing",
            }
        )

    async def status_view(request: Request) -> Response:
        gw = state.gateway
        if gw is None:
            return _unavailable("status", "gateway not started")
        return JSONResponse(get_system_status(gw))

    async def health_view(request: Request) -> Response:
        gw = state.gateway
        if gw is None:
            return _unavailable("health", "gateway not started")
        comps = components(gw)
        return JSONResponse(
            {"status": overall(comps), "components": {n: c["status"] for n, c in comps.items()}}
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def not_found(request: Request) -> Response:
        # JSON for every /api miss (odd path parameters included), never Starlette's text 404
        return _err(404, "not_found", "no such admin API endpoint")

    return [
        Route("/tools", tools, methods=["GET"]),
        Route("/tools/{name}/diff", tool_diff_view, methods=["GET"]),
        Route("/tools/{name}/approve", tool_approve, methods=["POST"]),
        Route("/upstreams", upstreams, methods=["GET"]),
        Route("/upstreams/{name}/restart", restart, methods=["POST"]),
        Route("/discovered", discovered, methods=["GET"]),
        Route("/discovered/{name}/approve", discovered_approve, methods=["POST"]),
        Route("/sessions", sessions, methods=["GET"]),
        Route("/state", footprint, methods=["GET"]),
        Route("/pins", pins, methods=["GET"]),
        Route("/calls/recent", calls, methods=["GET"]),
        Route("/audit/recent", audit_recent, methods=["GET"]),
        Route("/audit/query", audit_query_view, methods=["GET"]),
        Route("/audit/export", audit_export, methods=["GET"]),
        Route("/audit/verify", audit_verify_view, methods=["GET"]),
        Route("/policy/status", policy_status_view, methods=["GET"]),
        Route("/policy/reload", policy_reload, methods=["POST"]),
        Route("/agents", agents, methods=["GET"]),
        Route("/agents/{id}", agent_view, methods=["GET"]),
        *(Route(f"/agents/{{id}}/{a}", _bind_action(agent_act, a), methods=["POST"]) for a in AGENT_ACTIONS),
        Route("/agents/{id}/run", agent_run, methods=["POST"]),
        Route("/status", status_view, methods=["GET"]),
        Route("/health", health_view, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/{rest:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
