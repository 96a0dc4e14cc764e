"""The admin REST API under ``/api`` (admin role only) and its OpenAPI document.

Handlers are thin: they read the running ``Gateway`` and the HTTP state, nothing more.
The auth middleware has already refused non-admins with 403 before a handler runs.

Components the config turned off (``gw.audit``, ``gw.policy`` are None) answer 503 with a
reason.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import ActionUnrecorded, ApprovalError, AuditError, GatewayError, NotStarted
from gateway.events import Event
from gateway.jsonlimits import too_large
from gateway.principals import principal_malformed, principal_unknown
from gateway.runtime.orders import ACTIONS
from gateway.runtime.status import agent_row, agent_rows, components, get_system_status, overall
from gateway.server.approvals import approve_discovered, approve_tool, discovered_rows, tool_diff
from gateway.server.auditquery import audit_filters
from gateway.server.footprint import http_footprint
from gateway.server.openapi import OPENAPI
from gateway.server.operations import (
    PRINCIPAL_ACTIONS,
    PRINCIPAL_MAX,
    act_on_agent,
    act_on_principal,
    audit_log,
    audit_query,
    audit_verify,
    key_unknown,
    policy_status,
    principal_rows,
    tool_rows,
    unrecordable,
    upstream_rows,
)
from gateway.server.oprecord import record_action, with_record
from gateway.server.unavailable import unavailable
from gateway.textcheck import not_utf8_at

if TYPE_CHECKING:
    from gateway.runtime.agents import Agent
    from gateway.server.http import HttpState


def _unavailable(what: str, why: GatewayError | str) -> JSONResponse:
    return JSONResponse(unavailable(what, why), status_code=503)


def _err(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


def _answer(unrec: ActionUnrecorded | None, status: int, body: dict[str, Any]) -> JSONResponse:
    """An operator action's answer once its record is committed, else 503 ``action_unrecorded``
    (done, its record held: ``oprecord``)."""
    status, body = with_record(unrec, status, body)
    return JSONResponse(body, status_code=status)


def _refused(e: ApprovalError | NotStarted, component: str = "verification") -> JSONResponse:
    if isinstance(e, NotStarted) or e.status == 503:  # with its code, as every other 503 here
        return _unavailable(component, e)
    error = {404: "not_found", 400: "bad_request"}.get(e.status, "conflict")
    return JSONResponse({"error": error, "code": e.code, "reason": e.message}, status_code=e.status)


def _limit(request: Request, default: int = 50, most: int = 1000) -> int | None:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if 1 <= n <= most else None


def _bind_action(handler: Any, action: str) -> Any:
    async def run(request: Request) -> Response:
        return await handler(request, action)  # type: ignore[no-any-return]

    return run


BODY_DEPTH = 8  # containers in an admin body: each is one flat object


async def _body(request: Request, shape: str) -> dict[str, Any] | None | JSONResponse:
    """An admin request's JSON object body (None when empty), or the 400 naming what is wrong.
    orjson parses it: ``json.loads`` recursed once a level and a body 100,000 levels deep
    raised RecursionError, a 500; orjson stops at 1,024 levels and the body's own depth is held
    to ``BODY_DEPTH``. Text that is not valid UTF-8 (the escape ``"\\ud800"``), which the
    agent's state, every later listing of it and the audit record could not write, is refused."""
    body = await request.body()
    if not body.strip():
        return None
    try:
        doc = orjson.loads(body)
    except ValueError as e:
        return _err(400, "bad_request", f"body is not JSON ({e}): it must be JSON {shape}")
    if not isinstance(doc, dict):
        return _err(400, "bad_request", f"body must be JSON {shape}")
    if (deep := too_large(doc, max_depth=BODY_DEPTH)) is not None:
        return _err(400, "bad_request", f"body at {deep.path or '.'}: {deep.problem}")
    if (bad := not_utf8_at(doc)) is not None:
        return _err(400, "bad_request", f"the text at {bad} is not valid UTF-8")
    return doc


async def _reviewed(
    request: Request, field: str = "hash", shape: str = '{"hash": "<current_hash from the diff>"}'
) -> str | None | JSONResponse:
    """The ``field`` of an approval's body: what the admin reviewed (a tool's definition hash,
    a discovered server's config digest; None when absent, which the approval refuses by name),
    or the 400 refusing the body."""
    doc = await _body(request, shape)
    if doc is None or isinstance(doc, JSONResponse):
        return doc
    if not isinstance(doc.get(field, ""), str):
        return _err(400, "bad_request", f"body must be JSON {shape}")
    return doc.get(field) or None


async def _reason(request: Request) -> str | JSONResponse:
    """The optional ``reason`` of an agent action ("" when no body), or the 400 refusing the body."""
    shape = '{"reason": "..."} (or empty)'
    doc = await _body(request, shape)
    if doc is None:
        return ""
    if isinstance(doc, JSONResponse):
        return doc
    if not isinstance(doc.get("reason", ""), str):
        return _err(400, "bad_request", f"body must be JSON {shape}")
    return str(doc.get("reason", ""))[:500]


def admin_routes(state: HttpState) -> list[Route]:
    """The ``/api`` routes (mounted behind the admin check)."""
    return AdminApi(state).routes()


_NO_AUDIT = "the audit log is not enabled in this gateway"
_NO_POLICY = "the policy engine is not enabled in this gateway"
_BAD_LIMIT = "limit must be an integer from 1 to 1000"


class AdminApi:
    """One method per ``/api`` endpoint, over the HTTP front's state; ``routes`` is the table."""

    def __init__(self, state: HttpState) -> None:
        self.state = state

    def routes(self) -> list[Route]:
        get, post = ["GET"], ["POST"]
        return [
            Route("/tools", self.tools, methods=get),
            Route("/tools/{name}/diff", self.tool_diff, methods=get),
            Route("/tools/{name}/approve", self.tool_approve, methods=post),
            Route("/upstreams", self.upstreams, methods=get),
            Route("/upstreams/{name}/restart", self.restart, methods=post),
            Route("/discovered", self.discovered, methods=get),
            Route("/discovered/{name}/approve", self.discovered_approve, methods=post),
            Route("/sessions", self.sessions, methods=get),
            Route("/state", self.footprint, methods=get),
            Route("/pins", self.pins, methods=get),
            Route("/calls/recent", self.calls, methods=get),
            Route("/audit/recent", self.audit_recent, methods=get),
            Route("/audit/query", self.audit_query, methods=get),
            Route("/audit/export", self.audit_export, methods=get),
            Route("/audit/verify", self.audit_verify, methods=get),
            Route("/policy/status", self.policy_status, methods=get),
            Route("/policy/reload", self.policy_reload, methods=post),
            Route("/agents", self.agents, methods=get),
            Route("/agents/{id}", self.agent_view, methods=get),
            *(Route(f"/agents/{{id}}/{a}", _bind_action(self.agent_act, a), methods=post) for a in ACTIONS),
            Route("/agents/{id}/run", self.agent_run, methods=post),
            Route("/principals", self.principals, methods=get),
            *(
                Route(f"/principals/{a}", _bind_action(self.principal_act, a), methods=post)
                for a in PRINCIPAL_ACTIONS
            ),
            Route("/status", self.status, methods=get),
            Route("/health", self.health, methods=get),
            Route("/openapi.json", self.openapi, methods=get),
            Route("/{rest:path}", self.not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ]

    # -- tools, upstreams, sessions ---------------------------------------------------------

    async def tools(self, request: Request) -> Response:
        return JSONResponse({"tools": tool_rows(self.state)})

    async def tool_diff(self, request: Request) -> Response:
        try:
            # off the event loop: with [state] postgres_url the tool state is a round trip
            diff = await anyio.to_thread.run_sync(tool_diff, self.state.gateway, request.path_params["name"])
        except (ApprovalError, NotStarted) as e:
            return _refused(e)
        return JSONResponse(diff)

    async def tool_approve(self, request: Request) -> Response:
        reviewed = await _reviewed(request)
        if isinstance(reviewed, JSONResponse):
            return reviewed
        try:
            status, done = await approve_tool(
                self.state.gateway, request.path_params["name"], request.scope["symbi.principal"], reviewed
            )
        except (ApprovalError, NotStarted) as e:
            return _refused(e)
        return JSONResponse(done, status_code=status)

    async def upstreams(self, request: Request) -> Response:
        return JSONResponse({"upstreams": upstream_rows(self.state)})

    async def discovered(self, request: Request) -> Response:
        return JSONResponse({"servers": await anyio.to_thread.run_sync(discovered_rows, self.state.gateway)})

    async def discovered_approve(self, request: Request) -> Response:
        seen = await _reviewed(request, "digest", '{"digest": "<its digest from GET /discovered>"}')
        if isinstance(seen, JSONResponse):
            return seen
        try:  # no digest (""): refused by name, as a tool approval without its hash
            done = await approve_discovered(
                self.state.gateway, request.path_params["name"], request.scope["symbi.principal"], seen or ""
            )
        except (ApprovalError, NotStarted) as e:
            return _refused(e, "discovery")
        return JSONResponse(done)

    async def restart(self, request: Request) -> Response:
        name = request.path_params["name"]
        gw = self.state.gateway
        up = gw.upstreams.get(name) if gw is not None else None
        if gw is None or up is None:
            return _err(404, "not_found", f"no upstream named {name!r}")
        if (refused := self._unrecordable("upstream restart")) is not None:  # before every caller's calls end
            return refused
        await up.restart()
        who = request.scope["symbi.principal"].id  # every caller's calls in flight end: whose doing
        unrec = await record_action(
            gw, Event.UPSTREAM_RESTART_REQUESTED, {"upstream": name, "by": who}, principal=who
        )
        return _answer(unrec, 202, {"upstream": name, "restarting": True})

    async def sessions(self, request: Request) -> Response:
        state = self.state
        return JSONResponse({"max_sessions": state.config.http.max_sessions, "sessions": state.sessions()})

    async def footprint(self, request: Request) -> Response:
        return JSONResponse(http_footprint(self.state))

    async def pins(self, request: Request) -> Response:
        gw = self.state.gateway
        pins = await anyio.to_thread.run_sync(gw.verifier.pins.pins) if gw is not None else []
        return JSONResponse({"pins": [p.to_dict() for p in pins]})

    async def calls(self, request: Request) -> Response:
        n = _limit(request)
        if n is None:
            return _err(400, "bad_request", _BAD_LIMIT)
        return JSONResponse({"calls": [c.as_json() for c in self.state.recent.latest(n)]})

    # -- audit ----------------------------------------------------------------------------------

    def _off(self, component: str, reason: str) -> Response:
        """503 for a component this gateway does not have: turned off by the config (``reason``,
        no code: nothing to wait for), or the gateway not assembled yet (to be tried again)."""
        return _unavailable(component, NotStarted() if self.state.gateway is None else reason)

    async def audit_recent(self, request: Request) -> Response:
        log = audit_log(self.state)
        if log is None:
            return self._off("audit", _NO_AUDIT)
        n = _limit(request)
        if n is None:
            return _err(400, "bad_request", _BAD_LIMIT)
        return JSONResponse({"events": await anyio.to_thread.run_sync(log.recent, n)})

    async def _queried(self, request: Request, default_limit: int | None) -> list[dict[str, Any]] | Response:
        """The audit events the query parameters select, or the error response."""
        log = audit_log(self.state)
        if log is None:
            return self._off("audit", _NO_AUDIT)
        try:
            filters = audit_filters(request.query_params, default_limit=default_limit)
        except ValueError as e:
            return _err(400, "bad_request", str(e))
        return await anyio.to_thread.run_sync(audit_query, log, filters)

    async def audit_query(self, request: Request) -> Response:
        rows = await self._queried(request, default_limit=1000)
        return rows if isinstance(rows, Response) else JSONResponse({"events": rows})

    async def audit_export(self, request: Request) -> Response:
        rows = await self._queried(request, default_limit=None)
        if isinstance(rows, Response):
            return rows
        body = "".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) + "\n" for r in rows)
        return Response(body, media_type="application/x-ndjson")

    async def audit_verify(self, request: Request) -> Response:
        log = audit_log(self.state)
        if log is None:
            return self._off("audit", _NO_AUDIT)
        try:
            result = await anyio.to_thread.run_sync(audit_verify, log)
        except Exception as e:  # noqa: BLE001 - an unreadable log is "not verified", said plainly
            return _unavailable("audit", AuditError(f"verification could not run: {type(e).__name__}: {e}"))
        return JSONResponse(result)

    # -- policy ---------------------------------------------------------------------------------

    async def policy_status(self, request: Request) -> Response:
        doc = policy_status(self.state)
        if doc is None:
            return self._off("policy", _NO_POLICY)
        return JSONResponse(doc)

    async def policy_reload(self, request: Request) -> Response:
        gw = self.state.gateway
        eng = gw.policy if gw is not None else None
        if gw is None or eng is None:
            return self._off("policy", _NO_POLICY)
        if not eng.reloadable:
            return _err(409, "conflict", "this policy engine is not reloaded by the gateway (remote OPA)")
        if (refused := self._unrecordable("policy reload")) is not None:  # a policy in force nobody recorded
            return refused
        # a policy that does not parse or fails its tests is refused; the old one stays in force
        ok = await anyio.to_thread.run_sync(eng.reload)
        who = request.scope["symbi.principal"].id  # the engine's own events do not know who asked
        unrec = await record_action(
            gw, Event.POLICY_RELOAD_REQUESTED, {"by": who, "reloaded": ok}, principal=who
        )
        return _answer(unrec, 200 if ok else 422, {"reloaded": ok, **(policy_status(self.state) or {})})

    # -- agents and status (gateway.runtime) ----------------------------------------------------

    def _unrecordable(self, action: str) -> Response | None:
        """503, nothing done, when the audit log cannot record ``action`` now."""
        refused = unrecordable(audit_log(self.state), action)
        return None if refused is None else JSONResponse(refused[1], status_code=refused[0])

    def _agent(self, request: Request) -> Agent | None:
        gw = self.state.gateway
        return gw.runtime.agents.resolve(request.path_params["id"]) if gw is not None else None

    async def agents(self, request: Request) -> Response:
        gw = self.state.gateway
        if gw is None:
            return _unavailable("agents", NotStarted())
        return JSONResponse({"agents": agent_rows(gw.runtime)})

    async def agent_view(self, request: Request) -> Response:
        agent = self._agent(request)
        gw = self.state.gateway
        if gw is None or agent is None:
            return _err(404, "not_found", f"no agent {request.path_params['id']!r}")
        return JSONResponse(agent_row(gw.runtime, agent))

    async def agent_act(self, request: Request, action: str) -> Response:
        ref = request.path_params["id"]
        reason = await _reason(request)  # (an agent unknown anywhere: 404 from act_on_agent)
        if isinstance(reason, JSONResponse):
            return reason
        status, body = await act_on_agent(
            self.state, ref, action, request.scope["symbi.principal"].id, reason
        )
        return JSONResponse(body, status_code=status)

    async def principals(self, request: Request) -> Response:
        rows = principal_rows(self.state)
        if rows is None:
            return _unavailable("agents", NotStarted())
        return JSONResponse({"suspended": rows})

    async def principal_act(self, request: Request, action: str) -> Response:
        shape = '{"principal": "key:ID | jwt:ISSUER#SUB | ...", "reason": "..."}'
        doc = await _body(request, shape)
        if isinstance(doc, JSONResponse):
            return doc
        doc = doc or {}
        principal, reason = doc.get("principal"), doc.get("reason", "")
        if not isinstance(principal, str) or not isinstance(reason, str):
            return _err(400, "bad_request", f"body must be JSON {shape}")
        source, colon, ident = principal.partition(":")
        if not colon or not source or not ident or len(principal) > PRINCIPAL_MAX:
            why = (
                f"principal must be a qualified id of at most {PRINCIPAL_MAX} characters, as "
                "`symbi agents list` and the refusals name it (key:alice, jwt:<issuer>#alice)"
            )
            return _err(400, "bad_request", why)
        refused = await self._principal_refused(principal, action)
        if refused is not None:
            return refused
        who = request.scope["symbi.principal"].id
        status, body = await act_on_principal(self.state, principal, action, who, reason[:500])
        return JSONResponse(body, status_code=status)

    async def _principal_refused(self, principal: str, action: str) -> Response | None:
        """A suspension of a principal no caller of this gateway can be (a typo held no one
        while the operator was told "suspended"); a resume of one held is never refused by
        these checks (a hold made before them, under another issuer, or of a key since
        revoked, is cleared by name)."""
        gw = self.state.gateway
        if action == "resume" and gw is not None and gw.runtime.holds.holding(principal):
            return None
        malformed = principal_malformed(principal)
        if malformed is not None:
            return _err(400, "bad_request", malformed)
        cfg = self.state.config
        issuer = cfg.http.jwt.issuer if cfg.http.jwt is not None else None
        unknown = principal_unknown(principal, jwt_issuer=issuer, anonymous=cfg.anonymous_principal)
        if unknown is None:
            unknown = await key_unknown(self.state, principal)
        return None if unknown is None else _err(404, "not_found", unknown)

    async def agent_run(self, request: Request) -> Response:
        gw = self.state.gateway
        name = request.path_params["id"]
        ac = self.state.config.agents.get(name)
        if gw is None or gw.hosted is None or ac is None:
            return _err(404, "not_found", f"no hosted agent {name!r} ([agents.{name}])")
        if not ac.enabled:  # no supervisor waits for it: "starting" would start nothing
            return _err(
                404, "not_found", f"hosted agent {name!r} is disabled (agents.{name}.enabled = false)"
            )
        if (refused := self._unrecordable("run")) is not None:  # a start whose record raised was a 500
            return refused
        result = gw.hosted.request_start(name)
        who = request.scope["symbi.principal"].id
        unrec = await record_action(
            gw, Event.AGENT_RUN_REQUESTED, {"name": name, "by": who, "result": result}, principal=who
        )
        agent = gw.runtime.agents.by_name(name)
        body = {
            "agent": agent.id if agent else name,
            "result": result,
            "state": agent.state.value if agent else "Initializing",
        }
        return _answer(unrec, 200, body)

    async def status(self, request: Request) -> Response:
        gw = self.state.gateway
        if gw is None:
            return _unavailable("status", NotStarted())
        return JSONResponse(get_system_status(gw))

    async def health(self, request: Request) -> Response:
        gw = self.state.gateway
        if gw is None:
            return _unavailable("health", NotStarted())
        comps = components(gw)
        return JSONResponse(
            {"status": overall(comps), "components": {n: c["status"] for n, c in comps.items()}}
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def not_found(self, request: Request) -> Response:
        # JSON for every /api miss (odd path parameters included), never Starlette's text 404
        return _err(404, "not_found", "no such admin API endpoint")
