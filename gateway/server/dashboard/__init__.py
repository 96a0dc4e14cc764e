"""The web dashboard: server-rendered HTML, one CSS and one JS file, no external assets.

Login takes an admin API key; the session is an itsdangerous-signed cookie (HttpOnly,
SameSite=Strict, 8 h) holding only the key *id*, a session id and the session's path prefix,
re-checked on every request so a revoked key logs its sessions out, and a logout ends its
session here, not only in the browser. POSTs carry a per-session CSRF token as well (and the
Host/Origin guard in front of every route refuses cross-site Origins). The
Content-Security-Policy allows only this server's own files: no inline script, no CDN.

Every page of a session lives under a random path made at login, ``/d/<prefix>/``, and the
cookie's ``Path`` is that prefix: browsers do not isolate cookies by port (RFC 6265 section
8.5), so a cookie with ``Path=/`` went with every request to any other web server on the same
host (a dev server, a notebook), which could replay it. Such a server is asked for its own
paths, never this one, so the cookie stays here. The prefix is signed into the cookie: a cookie
presented under another prefix (or at the old top-level pages) is refused.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from gateway.context import is_admin
from gateway.errors import ApprovalError, AuthFailed, DefinitionChanged, NotStarted, StateUnavailable
from gateway.runtime.orders import ACTIONS
from gateway.runtime.status import agent_rows
from gateway.server.approvals import approve_discovered, approve_tool, discovered_rows, tool_diff
from gateway.server.dashboard.render import (
    agents_page,
    audit_page,
    decisions_page,
    login_page,
    overview_page,
    tool_page,
    tools_page,
    upstreams_page,
)
from gateway.server.dashboard.sessions import BASE, COOKIE, MAX_AGE_S, DashboardSessions
from gateway.server.operations import (
    act_on_agent,
    audit_log,
    audit_verify,
    tool_rows,
    upstream_rows,
)

if TYPE_CHECKING:
    from gateway.context import Principal
    from gateway.server.http import HttpState

__all__ = ["COOKIE", "MAX_AGE_S", "Dashboard", "DashboardSessions", "dashboard_routes"]

# the pages before session 39, at the top level: they answer the login page
_OLD_PAGES = ("/tools", "/tools/{name}", "/decisions", "/upstreams", "/agents", "/audit", "/logout")
_STATIC = Path(__file__).parent / "static"
_STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # no Referer (so no session path) to any other origin, another port included; not
    # "no-referrer": browsers then send Origin: null on form POSTs, which the guard refuses
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_HEADERS)


def _cookie(resp: Response, request: Request, value: str, path: str) -> None:
    resp.set_cookie(
        COOKIE,
        value,
        max_age=MAX_AGE_S,
        path=path,  # sent with this session's pages only, never to another port's paths
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _form(request: Request) -> dict[str, str] | None:
    """A form's fields (urlencoded only; the body size is capped by the body-limit middleware),
    or None: more fields than any form has (parse_qs raised, a 500 and a traceback in the log
    for every such POST, the login page's included)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    try:
        return {k: v[0] for k, v in parse_qs(body, max_num_fields=10).items()}
    except ValueError:
        return None


def _to_login() -> Response:
    return RedirectResponse("/", status_code=303, headers={"Referrer-Policy": "same-origin"})


def _bad_form() -> HTMLResponse:
    return _html(login_page("That form is not valid."), status=400)


def _status(e: ApprovalError | NotStarted) -> int:
    """A refused approval's status: its own, or 503 before the gateway runs (to be tried again)."""
    return e.status if isinstance(e, ApprovalError) else 503


def dashboard_routes(state: HttpState) -> list[BaseRoute]:
    """Routes at ``/`` (the login page), ``/login``, ``/static/...`` and, under a session's
    ``/d/<prefix>``, ``/``, ``/logout``, ``/tools``, ``/decisions``, ``/upstreams``, ``/agents``,
    ``/audit``."""
    return Dashboard(state).routes()


Page = Callable[[Request, dict[str, Any]], Awaitable[str]]


class Dashboard:
    """One method per dashboard page or form; ``routes`` is the table. Pages need a live
    session (else a redirect to the login page); forms need the session's CSRF token too."""

    def __init__(self, state: HttpState) -> None:
        self.state = state
        self.sessions = DashboardSessions(state)

    def routes(self) -> list[BaseRoute]:
        get, post = ["GET"], ["POST"]
        return [
            Route("/", self.index, methods=get),
            Route("/login", self.login, methods=post),
            Route("/static/{name}", self.static, methods=get),
            *(Route(path, self.to_login, methods=["GET", "POST"]) for path in _OLD_PAGES),
            Mount(BASE + "/{prefix}", routes=self.session_routes()),
        ]

    def session_routes(self) -> list[Route]:
        """The pages and forms of a session, under its ``/d/<prefix>``."""
        get, post, page = ["GET"], ["POST"], self._page
        return [
            Route("/", page(self.overview), methods=get),
            Route("/logout", self.logout, methods=post),
            Route("/tools", page(self.tools), methods=get),
            Route("/tools/{name}", page(self.tool), methods=get),
            Route("/tools/{name}/approve", self.approve, methods=post),
            Route("/decisions", page(self.decisions), methods=get),
            Route("/upstreams", page(self.upstreams), methods=get),
            Route("/discovered/{name}/approve", self.approve_server, methods=post),
            Route("/agents", page(self.agents), methods=get),
            Route("/agents/{id}/{action}", self.agent_act, methods=post),
            Route("/audit", page(self.audit), methods=get),
            Route("/static/{name}", self.static, methods=get),
        ]

    def _page(self, render: Page) -> Callable[[Request], Awaitable[Response]]:
        async def page(request: Request) -> Response:
            sess = await self.sessions.current(request)
            if sess is None:
                return _to_login()
            return _html(await render(request, sess))

        return page

    async def _posted(self, request: Request) -> tuple[dict[str, Any], dict[str, str]] | Response:
        """A form POST's session and fields, or the response that refuses it (no session: to the
        login page; a wrong CSRF token: 403)."""
        sess = await self.sessions.current(request)
        if sess is None:
            return _to_login()
        form = await _form(request)
        if form is None:
            return _bad_form()
        if not hmac.compare_digest(form.get("csrf", ""), sess["csrf"]):
            return _html(login_page("Invalid form token."), status=403)
        return sess, form

    async def _approval(
        self, request: Request
    ) -> tuple[dict[str, Any], Principal, dict[str, str]] | Response:
        """An approval form's session, the admin approving (a principal from its key as it is
        now) and the form's fields; or the response that refuses it (``_posted``'s, or the key
        is gone)."""
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        sess, form = posted
        rec = await anyio.to_thread.run_sync(self.state.auth.keys.get, sess["kid"])
        if rec is None:
            return _to_login()
        return sess, rec.as_principal(), form

    async def _discovered(self) -> list[dict[str, Any]] | None:
        gw = self.state.gateway
        if gw is None or not gw.config.mcp.discovery_enabled:
            return None
        return await anyio.to_thread.run_sync(discovered_rows, gw)

    # -- login -----------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return _html(login_page(None))

    async def to_login(self, request: Request) -> Response:
        return _to_login()

    async def overview(self, request: Request, sess: dict[str, Any]) -> str:
        state = self.state
        calls = state.recent.latest()
        return overview_page(
            sess,
            tools=len(tool_rows(state)),
            upstreams=upstream_rows(state),
            calls=len(calls),
            denied=sum(1 for c in calls if c.outcome == "denied"),
            ready=state.readiness()[0],
        )

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        if form is None:
            return _bad_form()
        key = form.get("api_key", "").strip()
        try:
            principal = await anyio.to_thread.run_sync(self.state.auth.from_key, key)
        except AuthFailed:
            return _html(login_page("That API key is not valid."), status=401)
        if not is_admin(principal):
            return _html(login_page("That API key does not have the admin role."), status=403)
        value, prefix = self.sessions.issue(str(principal.claims["key_id"]))
        base = f"{BASE}/{prefix}"
        resp = RedirectResponse(base + "/", status_code=303, headers={"Referrer-Policy": "same-origin"})
        _cookie(resp, request, value, base)
        return resp

    async def logout(self, request: Request) -> Response:
        sess = await self.sessions.current(request)
        form = await _form(request)
        if form is None:
            return _bad_form()
        if sess is not None and not hmac.compare_digest(form.get("csrf", ""), sess["csrf"]):
            return _html(login_page("Invalid form token."), status=403)
        if sess is not None:
            try:
                await self.sessions.end(sess)
            except StateUnavailable as e:  # the cookie still opens the pages: say so, keep it to retry
                return _html(login_page(f"The logout could not be recorded ({e.message}): try again."), 503)
        resp = _to_login()
        path = f"{BASE}/{request.path_params['prefix']}"
        resp.delete_cookie(COOKIE, path=path, httponly=True, samesite="strict")
        return resp

    # -- tools and upstreams ---------------------------------------------------------------------

    async def tools(self, request: Request, sess: dict[str, Any]) -> str:
        return tools_page(sess, tool_rows(self.state))

    async def tool(self, request: Request, sess: dict[str, Any]) -> str:
        try:
            diff = await anyio.to_thread.run_sync(tool_diff, self.state.gateway, request.path_params["name"])
        except (ApprovalError, NotStarted) as e:
            return tool_page(sess, None, e.message)
        return tool_page(sess, diff, None)

    async def approve(self, request: Request) -> Response:
        posted = await self._approval(request)
        if isinstance(posted, Response):
            return posted
        sess, principal, form = posted
        name = request.path_params["name"]
        try:
            # the hash of the definition the page showed: a definition swapped in since is refused
            status, done = await approve_tool(self.state.gateway, name, principal, form.get("hash"))
        except (ApprovalError, NotStarted) as e:
            diff = None
            if isinstance(e, DefinitionChanged):  # the page again, with the definition as it is now
                with contextlib.suppress(ApprovalError, NotStarted):  # (stopped meanwhile)
                    diff = await anyio.to_thread.run_sync(tool_diff, self.state.gateway, name)
            return _html(tool_page(sess, diff, e.message), status=_status(e))
        if status != 200:  # refused (the log cannot record it), or done and its record not committed
            return _html(tools_page(sess, tool_rows(self.state), done["reason"], error=True), status=status)
        note = f"Approved {done['tool']} ({done['approved_hash'][:12]})."
        if not done["catalogue_refreshed"]:
            note += " The catalogue is still being rebuilt: reload in a moment."
        return _html(tools_page(sess, tool_rows(self.state), note))

    async def decisions(self, request: Request, sess: dict[str, Any]) -> str:
        return decisions_page(sess, [c.as_json() for c in self.state.recent.latest(200)])

    async def upstreams(self, request: Request, sess: dict[str, Any]) -> str:
        return upstreams_page(sess, upstream_rows(self.state), await self._discovered())

    async def approve_server(self, request: Request) -> Response:
        posted = await self._approval(request)
        if isinstance(posted, Response):
            return posted
        sess, principal, form = posted
        try:  # the digest of the config the page showed: a config swapped in since is refused
            seen = str(form.get("digest") or "")
            done = await approve_discovered(self.state.gateway, request.path_params["name"], principal, seen)
        except (ApprovalError, NotStarted) as e:
            page = upstreams_page(sess, upstream_rows(self.state), await self._discovered(), e.message)
            return _html(page, status=_status(e))
        note = f"Approved {done['name']}: it starts within the recheck interval."
        return _html(upstreams_page(sess, upstream_rows(self.state), await self._discovered(), note))

    # -- agents and audit --------------------------------------------------------------------------

    def _agent_rows(self) -> list[dict[str, Any]]:
        gw = self.state.gateway
        return agent_rows(gw.runtime) if gw is not None else []

    async def agents(self, request: Request, sess: dict[str, Any]) -> str:
        return agents_page(sess, self._agent_rows())

    async def agent_act(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        sess, form = posted
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _html(login_page("Unknown action."), status=404)
        reason = form.get("reason", "").strip()[:500]
        ref, who = request.path_params["id"], sess["principal"]
        status, body = await act_on_agent(self.state, ref, action, who, reason)
        if status not in (200, 202):
            return _html(agents_page(sess, self._agent_rows(), body["reason"], error=True), status=status)
        # "state" None: a hosted terminate that only withdrew a start (no run to be in a state)
        state = body.get("state")
        note = f"{action}: {body['result']}" + (f" ({body['agent']} is {state})" if state else "")
        return _html(agents_page(sess, self._agent_rows(), note))

    async def audit(self, request: Request, sess: dict[str, Any]) -> str:
        log = audit_log(self.state)
        if log is None:
            return audit_page(sess, None, "The audit log is not enabled in this gateway.")
        try:
            result = await anyio.to_thread.run_sync(audit_verify, log)
            events = await anyio.to_thread.run_sync(log.recent, 20)
        except Exception as e:  # noqa: BLE001 - shown, not hidden
            return audit_page(sess, None, f"Verification could not run: {type(e).__name__}: {e}")
        return audit_page(sess, {"verify": result, "events": events}, None)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = _STATIC_FILES.get(name)
        if media is None:
            return Response("not found", status_code=404)
        return Response(
            (_STATIC / name).read_bytes(), media_type=media, headers={"Cache-Control": "max-age=300"}
        )
