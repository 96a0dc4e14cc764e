"""``symbi serve``: the gateway over streamable HTTP (Starlette + uvicorn), 127.0.0.1 by default.

Routes:
  ``/mcp``                                MCP, both protocol eras (SDK session manager); any principal
  ``/.well-known/oauth-protected-resource`` RFC 9728 metadata (public)
  ``/healthz`` ``/readyz`` ``/metrics``   operations (public; the server binds loopback)
  ``/api/...``                            admin REST API (admin role; ``gateway.server.admin``)
  ``/`` ``/login`` ...                    the dashboard (admin API key login; ``gateway.server.dashboard``)

Middleware, outermost first: access log → Host/Origin guard (DNS rebinding, for every
route) → body deadline (slow bodies get 408) → request body limit → authentication (for
``/mcp`` and ``/api``) → per-principal session quota → connection limit
(``mcp.max_concurrent_connections`` open requests to ``/mcp``; ``gateway.server.limits``).
Slow headers are cut off by the uvicorn protocol (``gateway.server.sessions.http_protocol``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import RequestBodyLimitMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.compat import open_http_sessions
from gateway.config.model import Config
from gateway.context import Principal, is_admin
from gateway.errors import AuthFailed, NoCredentials, StateUnavailable
from gateway.listen import ListenHub
from gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics, RecentCalls
from gateway.runtime.hosted import AgentHost
from gateway.runtime.status import components
from gateway.server.admin import admin_routes, audit_log, audit_writable, policy_status
from gateway.server.auth import Authenticator
from gateway.server.front import build_server
from gateway.server.limits import ConnectionLimit
from gateway.server.principals import http_session_key
from gateway.server.resume import STREAM_OWNER, BoundedEventStore, StreamOwner
from gateway.server.sessions import BodyDeadline, SessionQuota, http_protocol, sweep_revoked

_logger = logging.getLogger("symbi.http")
_access = logging.getLogger("symbi.access")

PRM_PATH = "/.well-known/oauth-protected-resource"
RECENT_CALLS = 500


def security_settings(config: Config) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: Host/Origin must be this server."""
    hosts = {"127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"}
    hosts.update(config.http.allowed_hosts)
    origins = {f"http://{h}" for h in hosts} | {f"https://{h}" for h in config.http.allowed_hosts}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


def _allowed(value: str, allowed: list[str]) -> bool:
    if value in allowed:
        return True
    return any(a.endswith(":*") and value.startswith(a[:-1]) for a in allowed)


@dataclass
class HttpState:
    """Everything the HTTP routes share (one per app)."""

    config: Config
    auth: Authenticator
    metrics: GatewayMetrics
    recent: RecentCalls
    manager: StreamableHTTPSessionManager
    holder: list[Gateway] = field(default_factory=list)
    cookie_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # why the gateway's lifespan ended while the HTTP server still runs (None: it runs)
    stopped: str | None = None

    @property
    def gateway(self) -> Gateway | None:
        return self.holder[-1] if self.holder else None

    def sessions(self) -> list[dict[str, Any]]:
        """Open legacy-era sessions (ids shortened: a session id is a capability)."""
        return [{"id": sid[:8], "owner": owner} for sid, owner in open_http_sessions(self.manager)]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        gw = self.gateway
        if self.stopped is not None:
            return False, {"ready": False, "reason": self.stopped, "config": True}
        if gw is None:
            return False, {"ready": False, "reason": "gateway not started", "config": True}
        doc: dict[str, Any] = {"config": True, "upstreams": {n: u.state for n, u in gw.upstreams.items()}}
        ready = all(s == "up" for s in doc["upstreams"].values())
        pol = policy_status(self)
        if pol is not None:
            doc["policy"] = bool(pol.get("loaded"))
            ready = ready and doc["policy"]
        log = audit_log(self)
        if log is not None:
            doc["audit"] = audit_writable(log)
            ready = ready and doc["audit"]
        # the runtime's view: breakers, scheduler, hosted agents (an unhealthy one is not ready)
        comps = components(gw)
        doc["components"] = {n: c["status"] for n, c in comps.items()}
        ready = ready and all(c["status"] != "unhealthy" for c in comps.values())
        doc["ready"] = ready
        return ready, doc


# -- middleware --------------------------------------------------------------------------------


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
        start = time.perf_counter()
        status = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - start) * 1000.0
            key = (self._route(scope["path"]), status[0])
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
                    status[0],
                    ms,
                    extra={
                        "fields": {
                            "event": "http.request",
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status[0],
                            "ms": round(ms, 3),
                            "principal": p.id if isinstance(p, Principal) else None,
                            "client": f"{client[0]}:{client[1]}" if client else None,
                            "session": Headers(scope=scope).get("mcp-session-id"),
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
        principal = scope.get("symbi.principal")
        sid = Headers(scope=scope).get("mcp-session-id")
        # the qualified principal: a JWT sub=alice never resumes the API key alice's streams
        owner = StreamOwner(principal.qualified if isinstance(principal, Principal) else "", sid)
        status = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                if owner.session is None:  # the initialize response names the new session
                    owner.session = Headers(raw=message.get("headers", [])).get("mcp-session-id")
            await send(message)

        token = STREAM_OWNER.set(owner)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            STREAM_OWNER.reset(token)
        gw = self.state.gateway
        if scope["method"] == "DELETE" and sid and 200 <= status[0] < 300 and gw is not None:
            gw.runtime.close_session(http_session_key(sid), "shutdown: the client closed its session")


class HostGuard:
    """DNS-rebinding protection for every route: Host must be ours; so must Origin if sent."""

    def __init__(self, app: ASGIApp, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.hosts = list(settings.allowed_hosts)
        self.origins = list(settings.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = headers.get("host", "")
            if not _allowed(host, self.hosts):
                await Response("Invalid Host header", status_code=421)(scope, receive, send)
                return
            origin = headers.get("origin")
            if origin is not None and not _allowed(origin, self.origins):
                await Response("Invalid Origin header", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class AuthGate:
    """Authenticates ``/mcp`` and ``/api`` requests; puts the principal in the ASGI scope.

    ``scope["symbi.principal"]`` is what the MCP front and the policy see; ``scope["user"]``
    binds each MCP session to the credential that opened it (the SDK answers 404 to anyone else).
    """

    def __init__(self, app: ASGIApp, state: HttpState) -> None:
        self.app = app
        self.state = state
        self.mcp_path = state.config.http.path

    def _protected(self, path: str) -> str | None:
        if path == self.mcp_path:
            return "mcp"
        if path == "/api" or path.startswith("/api/"):
            return "api"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        area = self._protected(scope["path"]) if scope["type"] == "http" else None
        if area is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        auth = self.state.auth
        try:
            if auth.keys_over_network or (
                auth.jwks_over_network and not headers.get("authorization", "").startswith("Bearer symbi_")
            ):
                # a JWKS (re)fetch / a key lookup in PostgreSQL is blocking I/O: never on the event loop
                principal = await anyio.to_thread.run_sync(auth.authenticate, headers)
            else:
                principal = auth.authenticate(headers)
        except NoCredentials:
            await self._challenge(scope, receive, send, None)
            return
        except AuthFailed as e:
            await self._challenge(scope, receive, send, e)
            return
        except StateUnavailable as e:  # the shared key store is down: refused, and said so
            await JSONResponse(
                {"error": "unavailable", "code": e.code, "reasons": e.reasons},
                status_code=503,
                headers={"Retry-After": "1"},
            )(scope, receive, send)
            return
        except Exception:
            _logger.exception("authentication failed unexpectedly")
            await self._challenge(scope, receive, send, AuthFailed("authentication error"))
            return
        if area == "api" and not is_admin(principal):
            await JSONResponse(
                {"error": "forbidden", "reason": "the admin role is required"}, status_code=403
            )(scope, receive, send)
            return
        scope["symbi.principal"] = principal
        if principal.kind != "anonymous":
            scope["user"] = AuthenticatedUser(_access_token(principal))
        await self.app(scope, receive, send)

    async def _challenge(self, scope: Scope, receive: Receive, send: Send, err: AuthFailed | None) -> None:
        url = f"{_base_url(scope)}{PRM_PATH}"
        challenge = f'Bearer resource_metadata="{url}"'
        body: dict[str, Any] = {"error": "unauthorized", "error_description": "credentials required"}
        if err is not None:
            challenge += ', error="invalid_token"'
            body = {"error": "invalid_token", "error_description": err.message}
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": challenge})(
            scope, receive, send
        )


async def _not_found(request: Request, exc: Exception) -> Response:
    # JSON under /api (the admin API's contract), even for paths no route can match
    if request.url.path.startswith("/api"):
        return JSONResponse({"error": "not_found", "reason": "no such admin API endpoint"}, status_code=404)
    return Response("Not Found", status_code=404, media_type="text/plain")


def _access_token(p: Principal) -> AccessToken:
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


def _base_url(scope: Scope) -> str:
    # The Host header has passed HostGuard by now.
    host = Headers(scope=scope).get("host", "127.0.0.1")
    return f"{scope.get('scheme', 'http')}://{host}"


# -- the app -----------------------------------------------------------------------------------


def build_app(config: Config, *, gateway_holder: list[Gateway] | None = None) -> Starlette:
    """The whole HTTP front as one Starlette app (enter its lifespan to start the gateway)."""
    from gateway.server.dashboard import dashboard_routes

    holder: list[Gateway] = gateway_holder if gateway_holder is not None else []
    metrics = GatewayMetrics(RECENT_CALLS)

    agent_socket = open_agent_socket() if config.agents else None
    auth = Authenticator.from_config(config)

    def factory(listen: ListenHub) -> Gateway:
        host = AgentHost(agent_socket.getsockname(), auth.keys) if agent_socket is not None else None
        gw = make_gateway(config, listen, metrics=metrics, agent_host=host)
        holder.append(gw)
        return gw

    server = build_server(config, factory)
    settings = security_settings(config)
    manager = StreamableHTTPSessionManager(
        app=server,
        event_store=BoundedEventStore(),  # resumable SSE streams (priming event id, replay)
        retry_interval=1000,
        json_response=config.http.json_response,
        security_settings=settings,
        session_idle_timeout=config.http.session_idle_timeout_s,
        max_request_body_size=config.http.max_request_bytes,
        max_sessions=config.http.max_sessions,
    )
    state = HttpState(
        config=config,
        auth=auth,
        metrics=metrics,
        recent=metrics.recent,
        manager=manager,
        holder=holder,
    )
    metrics.track_sessions(lambda: len(state.sessions()))
    metrics.track_runtime(lambda: state.gateway.runtime if state.gateway is not None else None)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            async with running():
                yield
        except BaseException as e:
            # uvicorn keeps serving after a lifespan that failed: without the gateway (its
            # background tasks, audit writer) this process must not look alive -- /healthz
            # turns 503 so the balancer drops it and the orchestrator restarts it
            leaf: BaseException = e
            while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
                leaf = leaf.exceptions[0]
            state.stopped = f"the gateway stopped: {type(leaf).__name__}"  # public: no message
            _logger.critical("%s (%s); /healthz now answers 503: restart this process", state.stopped, leaf)
            raise

    @contextlib.asynccontextmanager
    async def running() -> AsyncIterator[None]:
        async with manager.run(), anyio.create_task_group() as tg:
            # a revoked API key's sessions are closed (their slots freed, their agents ended)
            # within a second or two
            def end_agents(sid: str) -> None:
                if state.gateway is not None:
                    state.gateway.runtime.close_session(
                        http_session_key(sid), "shutdown: its API key was revoked"
                    )

            tg.start_soon(
                sweep_revoked, manager, lambda kid: state.auth.keys.get(kid) is not None, 1.0, end_agents
            )
            yield
            tg.cancel_scope.cancel()

    async def healthz(request: Request) -> Response:
        if state.stopped is not None:
            return JSONResponse({"status": "stopped", "reason": state.stopped}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, doc = state.readiness()
        return JSONResponse(doc, status_code=200 if ready else 503)

    async def metrics_view(request: Request) -> Response:
        if state.gateway is not None:
            metrics.keep_tools(state.gateway.catalog.tools)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def resource_metadata(request: Request) -> Response:
        base = _base_url(request.scope)
        doc = {
            "resource": f"{base}{config.http.path}",
            "authorization_servers": list(config.http.authorization_servers),
            "bearer_methods_supported": ["header"],
            "resource_name": config.gateway.name,
        }
        return JSONResponse(doc)

    mcp_endpoint = SessionScope(StreamableHTTPASGIApp(manager), state)
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_view, methods=["GET"]),
            Route(PRM_PATH, resource_metadata, methods=["GET"]),
            Route(PRM_PATH + config.http.path, resource_metadata, methods=["GET"]),
            Route(config.http.path, endpoint=mcp_endpoint, methods=["GET", "POST", "DELETE"]),
            Mount("/api", routes=admin_routes(state)),
            *dashboard_routes(state),
        ],
        lifespan=lifespan,
        exception_handlers={404: _not_found},
    )
    app.state.symbi = state
    app.state.agent_socket = agent_socket
    # add_middleware wraps outermost last: this order gives access log → host → body deadline →
    # body limit → auth → per-principal session quota → connection limit (only authenticated
    # MCP connections within their principal's quota take a slot).
    app.add_middleware(ConnectionLimit, path=config.http.path, limit=config.mcp.max_concurrent_connections)
    app.add_middleware(
        SessionQuota,
        manager=manager,
        limit=config.http.max_sessions_per_principal,
        client_id=lambda p: _access_token(p).client_id,
        path=config.http.path,
    )
    app.add_middleware(AuthGate, state=state)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=config.http.max_request_bytes)
    # outside the limit (which buffers the body itself): the deadline covers the whole read
    app.add_middleware(
        BodyDeadline, timeout=config.http.body_timeout_s, max_bytes=config.http.max_request_bytes
    )
    app.add_middleware(HostGuard, settings=settings)
    app.add_middleware(AccessLog, state=state)
    return app


def open_agent_socket() -> socket.socket:
    """The Unix socket hosted agents reach the gateway on (bound into their sandboxes).

    Its folder is private to this process (mode 0711: the sandbox's uid 65534 may pass through
    but not list it); the socket itself accepts anyone who can reach it, and every request still
    needs an API key (each hosted agent run has its own).
    """
    folder = tempfile.mkdtemp(prefix="symbi-agents-")
    os.chmod(folder, 0o711)
    path = os.path.join(folder, "gateway.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(128)
    atexit.register(shutil.rmtree, folder, True)
    return sock


def with_listen(config: Config, host: str | None = None, port: int | None = None) -> Config:
    """``config`` with the bind address replaced (CLI flags)."""
    update = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if not update:
        return config
    return config.model_copy(update={"http": config.http.model_copy(update=update)})


def run_http(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (``symbi serve``)."""
    import uvicorn

    cfg = with_listen(config, host, port)
    if cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
        _logger.warning("binding %s: the gateway is reachable beyond this machine", cfg.http.host)
    app = build_app(cfg)
    uv = uvicorn.Config(
        app,
        host=cfg.http.host,
        port=cfg.http.port,
        log_level=cfg.gateway.log_level.lower(),
        access_log=False,  # ours is structured (AccessLog)
        log_config=None,  # keep the gateway's logging set-up
        http=http_protocol(cfg.http.header_timeout_s),  # slow headers are cut off
        loop="uvloop",  # libuv: less CPU per socket read and write than asyncio's selector loop
    )
    sockets = [uv.bind_socket()]
    if app.state.agent_socket is not None:  # hosted agents: the same app on their Unix socket
        sockets.append(app.state.agent_socket)
    uvicorn.Server(uv).run(sockets=sockets)
