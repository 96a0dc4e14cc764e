"""The HTTP front's own ASGI middleware (the order is ``gateway.server.http.build_app``'s):
the access log, the Host/Origin guard, authentication of ``/mcp`` and ``/api``, and the MCP
endpoint's session scope (whose stream, the end of a session)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import Principal, is_admin
from gateway.errors import AuthFailed, NoCredentials, StateUnavailable
from gateway.runtime.runkeys import RunCredentials
from gateway.server.connections import TRUST
from gateway.server.principals import http_session_key, scope_headers
from gateway.server.resume import STREAM_OWNER, StreamOwner

if TYPE_CHECKING:
    from gateway.server.http import HttpState

_logger = logging.getLogger("symbi.http")
_access = logging.getLogger("symbi.access")

PRM_PATH = "/.well-known/oauth-protected-resource"
_USERS_KEPT = 1024  # principals whose SDK user is kept (AuthGate._user)
_PASSED_KEPT = 256  # Host/Origin pairs that passed (HostGuard.refusal)


def _allowed(value: str, allowed: list[str]) -> bool:
    """``value`` is one of ``allowed``, or matches an ``HOST:*`` entry with a port: digits only
    (a plain prefix took ``http://localhost:1@evil.example`` and ``Host: localhost:evil``)."""
    if value in allowed:
        return True
    for a in allowed:
        if a.endswith(":*") and value.startswith(a[:-1]):
            port = value[len(a) - 1 :]
            if port.isascii() and port.isdigit() and len(port) <= 5:
                return True
    return False


class AccessLog:
    """One structured line per request (JSON when ``gateway.log_format = "json"``)."""

    def __init__(self, app: ASGIApp, state: HttpState) -> None:
        self.app = app
        self.state = state
        self.enabled = state.config.http.access_log
        self.mcp_path = state.config.http.path
        self._counters: dict[tuple[str, int], Any] = {}  # (route group, status) -> its counter

    def _route(self, path: str) -> str:
        # a small fixed set of label values (never the raw path)
        if path == self.mcp_path:
            return "mcp"
        for prefix in ("/api/", "/.well-known/", "/static/"):
            if path.startswith(prefix):
                return prefix.strip("/.")
        return path if path in ("/healthz", "/readyz", "/metrics", "/", "/login", "/logout") else "dashboard"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.logged(scope, send, lambda watched: self.app(scope, receive, watched))

    async def logged(self, scope: Scope, send: Send, run: Callable[[Send], Awaitable[None]]) -> None:
        """Run ``run`` with a ``send`` that reads the response's status, then ``record`` it
        (also ``gateway.server.httpfront``'s session POST, which runs the checks itself)."""
        start = time.perf_counter()
        status = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await run(send_wrapper)
        finally:
            self.record(scope, status[0], start)

    def record(self, scope: Scope, status: int, start: float) -> None:
        """Count the request (and log it, when the access log is on): its route group and status."""
        ms = (time.perf_counter() - start) * 1000.0
        key = (self._route(scope["path"]), status)
        counter = self._counters.get(key)
        if counter is None:  # a few route groups x statuses: looked up once, not per request
            counter = self._counters[key] = self.state.metrics.http_requests.labels(key[0], str(key[1]))
        counter.inc()
        if self.enabled:
            p = scope.get("symbi.principal")
            client = scope.get("client")
            _access.info(
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                ms,
                extra={
                    "fields": {
                        "event": "http.request",
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(ms, 3),
                        "principal": p.id if isinstance(p, Principal) else None,
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "session": scope_headers(scope).get("mcp-session-id"),
                    }
                },
            )


class SessionScope:
    """Wraps the MCP endpoint: whose session a request is in, and the end of a session.

    - Every request runs with ``STREAM_OWNER`` set (principal + session id; for the
      initialize request the id is read off its response), so the event store knows whose
      events it keeps and replays a stream to its own session only. The session's tasks,
      started by the initialize request, inherit it.
    - A session its client closed (DELETE, answered 2xx) ends its agents. The SDK answers
      404 to a DELETE from anyone but the session's opener, so only the owner can. Sessions
      that end otherwise (idle timeout, crash) are ended by the runtime's sweep after
      ``runtime.agent_idle_timeout_s``.
    """

    def __init__(self, app: ASGIApp, state: HttpState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sid = scope_headers(scope).get("mcp-session-id")
        owner = stream_owner(scope, sid)
        status = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                if owner.session is None:  # the initialize response names the new session
                    owner.session = Headers(raw=message.get("headers", [])).get("mcp-session-id")
                elif scope["method"] == "GET" and status[0] == 200:  # the session's GET stream
                    self.state.stream_expiry.opened(owner.session, scope.get("symbi.principal"))
            await send(message)

        # only a DELETE's status, a GET stream's opening and an initialize's session id are
        # read off the response
        watched = send_wrapper if sid is None or scope["method"] != "POST" else send
        token = STREAM_OWNER.set(owner)
        try:
            await self.app(scope, receive, watched)
        finally:
            STREAM_OWNER.reset(token)
        gw = self.state.gateway
        if scope["method"] == "DELETE" and sid and 200 <= status[0] < 300 and gw is not None:
            gw.runtime.close_session(http_session_key(sid), "shutdown: the client closed its session")


def stream_owner(scope: Scope, sid: str | None) -> StreamOwner:
    """Whose stream a request of session ``sid`` is (``STREAM_OWNER``), by its principal: the
    qualified one, so a JWT sub=alice never resumes the API key alice's streams."""
    principal = scope.get("symbi.principal")
    return StreamOwner(principal.qualified if isinstance(principal, Principal) else "", sid)


class HostGuard:
    """DNS-rebinding protection for every route: Host must be ours; so must Origin if sent."""

    def __init__(self, app: ASGIApp, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.hosts = list(settings.allowed_hosts)
        self.origins = list(settings.allowed_origins)
        # (Host, Origin) values that passed: the lists above never change, clients send few
        # values; only a pass is kept (a refusal is decided anew), a bounded set
        self._passed: set[tuple[str | None, str | None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope_headers(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[str, str]) -> Response | None:
        """The answer to a request whose Host (or Origin, if sent) is not ours; None: it passes."""
        host = headers.get("host")
        origin = headers.get("origin")
        if (host, origin) in self._passed:
            return None
        if not _allowed(host or "", self.hosts):
            return Response("Invalid Host header", status_code=421)
        if origin is not None and not _allowed(origin, self.origins):
            return Response("Invalid Origin header", status_code=403)
        if len(self._passed) >= _PASSED_KEPT:
            self._passed.clear()
        self._passed.add((host, origin))
        return None


def protected_area(path: str, mcp_path: str) -> str | None:
    """What credentials guard at ``path``: "mcp" (the MCP endpoint), "api" (the admin API), or
    None (health, metrics, the dashboard, whose login takes its own key)."""
    if path == mcp_path:
        return "mcp"
    if path == "/api" or path.startswith("/api/"):
        return "api"
    return None


class AuthGate:
    """Authenticates ``/mcp`` and ``/api`` requests; puts the principal in the ASGI scope.

    ``scope["symbi.principal"]`` is what the MCP front and the policy see; ``scope["user"]``
    binds each MCP session to the credential that opened it (the SDK answers 404 to anyone else).
    """

    def __init__(self, app: ASGIApp, state: HttpState) -> None:
        self.app = app
        self.state = state
        self.mcp_path = state.config.http.path
        self._users: dict[tuple[Any, ...], AuthenticatedUser] = {}
        # keys shared by replicas: a hosted agent's run key is checked against where it runs
        cfg = state.config
        self._runs = RunCredentials(cfg) if cfg.agents and state.auth.keys_over_network else None

    def _protected(self, path: str) -> str | None:
        return protected_area(path, self.mcp_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        area = self._protected(scope["path"]) if scope["type"] == "http" else None
        if area is None:
            await self.app(scope, receive, send)
            return
        if await self.admit(scope, receive, send, area):
            await self.app(scope, receive, send)

    async def admit(self, scope: Scope, receive: Receive, send: Send, area: str) -> bool:
        """Authenticate a request of ``area`` ("mcp" or "api"): True with its principal in the
        scope, or False with the refusal sent (401, 403, 503)."""
        headers = scope_headers(scope)
        auth = self.state.auth
        try:
            principal = auth.authenticate_now(headers)  # None: it needs blocking I/O
            if principal is None:
                # a JWKS (re)fetch / a key lookup in PostgreSQL is blocking I/O: never on the event loop
                principal = await anyio.to_thread.run_sync(
                    auth.authenticate, headers, limiter=auth.limiter_for(headers)
                )
            if self._runs is not None and self._runs.applies(principal):
                gw = self.state.gateway  # a hosted agent's key: good where and while it runs
                await self._runs.admit(principal, gw.hosted if gw is not None else None)
        except NoCredentials:
            await self._challenge(scope, receive, send, None)
            return False
        except AuthFailed as e:
            await self._challenge(scope, receive, send, e)
            return False
        except StateUnavailable as e:  # the shared key store is down: refused, and said so
            await JSONResponse(
                {"error": "unavailable", "code": e.code, "reasons": e.reasons},
                status_code=503,
                headers={"Retry-After": "1"},
            )(scope, receive, send)
            return False
        except Exception:
            _logger.exception("authentication failed unexpectedly")
            await self._challenge(scope, receive, send, AuthFailed("authentication error"))
            return False
        if area == "api" and not is_admin(principal):
            await JSONResponse(
                {"error": "forbidden", "reason": "the admin role is required"}, status_code=403
            )(scope, receive, send)
            return False
        scope["symbi.principal"] = principal
        if principal.kind != "anonymous":
            scope["user"] = self._user(principal)
            trust = scope.get(TRUST)  # its connection is never closed for another's from now
            if trust is not None:
                trust()
        return True

    def _user(self, p: Principal) -> AuthenticatedUser:
        """The SDK's user of this principal: made from exactly the fields ``access_token``
        reads, so one made for equal fields is the same (the SDK only reads it); a bounded map."""
        key = (p.source, p.claims.get("key_id") if p.source == "key" else None, p.id, p.roles, p.issuer)
        user = self._users.get(key)
        if user is None:
            if len(self._users) >= _USERS_KEPT:
                self._users.clear()
            user = self._users[key] = AuthenticatedUser(access_token(p))
        return user

    async def _challenge(self, scope: Scope, receive: Receive, send: Send, err: AuthFailed | None) -> None:
        url = f"{base_url(scope)}{PRM_PATH}"
        challenge = f'Bearer resource_metadata="{url}"'
        body: dict[str, Any] = {"error": "unauthorized", "error_description": "credentials required"}
        if err is not None:
            challenge += ', error="invalid_token"'
            body = {"error": "invalid_token", "error_description": err.message}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})(
            scope, receive, send
        )


def access_token(p: Principal) -> AccessToken:
    """The SDK's view of a credential, used only to bind sessions to their opener.

    Keyed by where the principal comes from: only an API key principal's ``key_id`` names a
    key (a JWT's claims are the issuer's, and a ``key_id`` claim there means nothing), and a
    JWT is its issuer and subject, so equal subjects of two issuers never share sessions.
    """
    kid = p.claims.get("key_id") if p.source == "key" else None
    if kid is not None:
        return AccessToken(
            token=f"apikey:{kid}", client_id=f"apikey:{kid}", scopes=list(p.roles), subject=p.id
        )
    return AccessToken(
        token=p.qualified, client_id=p.qualified, scopes=list(p.roles), subject=p.id, claims={"iss": p.issuer}
    )


def base_url(scope: Scope) -> str:
    # The Host header has passed HostGuard by now.
    host = scope_headers(scope).get("host", "127.0.0.1")
    return f"{scope.get('scheme', 'http')}://{host}"
