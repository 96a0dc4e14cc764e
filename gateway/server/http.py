"""``symbi serve``: the gateway over streamable HTTP (Starlette + uvicorn), 127.0.0.1 by default.

Routes:
  ``/mcp``                                MCP, both protocol eras (SDK session manager); any principal
  ``/.well-known/oauth-protected-resource`` RFC 9728 metadata (public)
  ``/healthz`` ``/readyz`` ``/metrics``   operations (public; the server binds loopback)
  ``/api/...``                            admin REST API (admin role; ``gateway.server.admin``)
  ``/`` ``/login`` ``/d/<prefix>/...``    the dashboard (admin API key login; ``gateway.server.dashboard``)

Middleware, outermost first: access log → Host/Origin guard (DNS rebinding, for every
route) → body deadline (slow bodies get 408) → request body limit → authentication (for
``/mcp`` and ``/api``) → per-principal session quota → connection limit
(``mcp.max_concurrent_connections`` open requests to ``/mcp``; ``gateway.server.limits``),
built as one layer (``gateway.server.httpfront``: a POST to ``/mcp`` naming its session runs
the same checks in one frame).
Slow headers are cut off by the uvicorn protocol (``gateway.server.sessions.http_protocol``),
which also bounds the open connections (``http.max_connections``; ``gateway.server.connections``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.compat import open_http_sessions
from gateway.config.model import Config
from gateway.listen import ListenHub
from gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics, RecentCalls
from gateway.runtime.launch import AgentHost
from gateway.runtime.status import components
from gateway.server.admin import admin_routes
from gateway.server.agentsocket import open_agent_socket, remove_agent_folder
from gateway.server.auth import Authenticator
from gateway.server.connections import ensure_open_files
from gateway.server.front import build_server
from gateway.server.httpfront import HttpFront, McpEndpoint
from gateway.server.httplane import HttpLane
from gateway.server.middleware import PRM_PATH, SessionScope, base_url
from gateway.server.operations import audit_log, audit_writable, policy_status
from gateway.server.principals import http_session_key
from gateway.server.resume import BoundedEventStore
from gateway.server.sessions import StreamExpiry, http_protocol, sweep_revoked

_logger = logging.getLogger("symbi.http")

RECENT_CALLS = 500


def security_settings(config: Config) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: Host/Origin must be this server."""
    hosts = {"127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"}
    hosts.update(config.http.allowed_hosts)
    origins = {f"http://{h}" for h in hosts} | {f"https://{h}" for h in config.http.allowed_hosts}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


@dataclass
class HttpState:
    """Everything the HTTP routes share (one per app)."""

    config: Config
    auth: Authenticator
    metrics: GatewayMetrics
    recent: RecentCalls
    manager: StreamableHTTPSessionManager
    holder: list[Gateway] = field(default_factory=list)
    # the dashboard's cookie key in one process; with [state] redis_url the processes derive a
    # shared one instead (gateway.server.dashboard.sessions.cookie_key)
    cookie_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    # why the gateway's lifespan ended while the HTTP server still runs (None: it runs)
    stopped: str | None = None
    # when the JWT each session's GET stream was opened with expires (closed then)
    stream_expiry: StreamExpiry = field(default_factory=StreamExpiry)
    # the tools/call fast lane (mcp.http_fast_lane; SSE and JSON replies), or with it off the
    # wrapper that refuses a request whose id is in flight in its session
    lane: HttpLane | None = None

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


async def _not_found(request: Request, exc: Exception) -> Response:
    # JSON under /api (the admin API's contract), even for paths no route can match
    if request.url.path.startswith("/api"):
        return JSONResponse({"error": "not_found", "reason": "no such admin API endpoint"}, status_code=404)
    return Response("Not Found", status_code=404, media_type="text/plain")


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
    manager = _session_manager(config, server, settings)
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

    mcp_route, lane = _mcp_route(config, server, manager, state)
    operations = _operations_routes(state, metrics)
    app = Starlette(
        routes=[
            *_front_routes(config.http.path, mcp_route, operations),
            Mount("/api", routes=admin_routes(state)),
            *dashboard_routes(state),
        ],
        lifespan=_lifespan(state, manager),
        exception_handlers={404: _not_found},
    )
    app.state.symbi = state
    app.state.agent_socket = agent_socket
    app.state.http_lane = lane if config.mcp.http_fast_lane else None  # the lane that serves calls
    state.lane = lane
    # the MCP route's POSTs of a session skip the chain's wrappers, not its checks (httpfront);
    # an operations route that has the MCP path keeps it, and every request takes the chain
    shadowed = any(r.path == config.http.path for r in operations)
    mcp = None if shadowed else McpEndpoint(mcp_route, lane, app.router)
    app.add_middleware(HttpFront, state=state, manager=manager, settings=settings, mcp=mcp)
    return app


def _session_manager(
    config: Config, server: Server[Gateway], settings: TransportSecuritySettings
) -> StreamableHTTPSessionManager:
    """The SDK's session manager with the [http] limits: body size, sessions, idle timeout."""
    return StreamableHTTPSessionManager(
        app=server,
        event_store=BoundedEventStore(),  # resumable SSE streams (priming event id, replay)
        retry_interval=1000,
        json_response=config.http.json_response,
        security_settings=settings,
        session_idle_timeout=config.http.session_idle_timeout_s,
        max_request_body_size=config.http.max_request_bytes,
        max_sessions=config.http.max_sessions,
    )


def _mcp_route(
    config: Config, server: Server[Gateway], manager: StreamableHTTPSessionManager, state: HttpState
) -> tuple[Route, HttpLane]:
    """The MCP endpoint's route, behind the HTTP fast lane (plain tools/call answered by the
    gateway when ``mcp.http_fast_lane`` is on; the rest goes on to the SDK's endpoint). With the
    lane off the wrapper stays, for its refusal of a request whose id is in flight."""
    lane = HttpLane(StreamableHTTPASGIApp(manager), server, manager, serve_calls=config.mcp.http_fast_lane)
    server.middleware.append(lane.capture)
    route = Route(config.http.path, endpoint=SessionScope(lane, state), methods=["GET", "POST", "DELETE"])
    return route, lane


def _front_routes(path: str, mcp_route: Route, operations: list[Route]) -> list[Route]:
    """The router tries routes in order and nearly every request is an MCP one: its route
    first, unless the MCP path is an operations route's (which kept it before, and keeps it)."""
    shadowed = any(r.path == path for r in operations)
    return [*operations, mcp_route] if shadowed else [mcp_route, *operations]


def _lifespan(
    state: HttpState, manager: StreamableHTTPSessionManager
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """The app's lifespan: the session manager and the revoked keys' sweep; a gateway that
    fails or stops marks the process stopped (``/healthz`` answers 503)."""

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
                if state.lane is not None:  # its lane calls too
                    state.lane.session_closed(sid)
                if state.gateway is not None:
                    state.gateway.runtime.close_session(
                        http_session_key(sid), "shutdown: its API key was revoked"
                    )

            def listens() -> ListenHub | None:  # the 2026-era listen streams, once the gateway runs
                return state.gateway.listen if state.gateway is not None else None

            tg.start_soon(
                sweep_revoked,
                manager,
                lambda kid: state.auth.keys.get(kid) is not None,
                1.0,
                end_agents,
                listens,
                state.stream_expiry,
            )
            yield
            tg.cancel_scope.cancel()

    return lifespan


def _operations_routes(state: HttpState, metrics: GatewayMetrics) -> list[Route]:
    """``/healthz``, ``/readyz``, ``/metrics`` and the RFC 9728 metadata (public)."""

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
        base = base_url(request.scope)
        doc = {
            "resource": f"{base}{state.config.http.path}",
            "authorization_servers": list(state.config.http.authorization_servers),
            "bearer_methods_supported": ["header"],
            "resource_name": state.config.gateway.name,
        }
        return JSONResponse(doc)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_view, methods=["GET"]),
        Route(PRM_PATH, resource_metadata, methods=["GET"]),
        Route(PRM_PATH + state.config.http.path, resource_metadata, methods=["GET"]),
    ]


def with_listen(config: Config, host: str | None = None, port: int | None = None) -> Config:
    """``config`` with the bind address replaced (CLI flags)."""
    update = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if not update:
        return config
    return config.model_copy(update={"http": config.http.model_copy(update=update)})


def run_http(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """Serve until interrupted (``symbi serve``)."""
    cfg = with_listen(config, host, port)
    if cfg.http.host not in ("127.0.0.1", "::1", "localhost"):
        _logger.warning("binding %s: the gateway is reachable beyond this machine", cfg.http.host)
    # before anything starts: exit 2 naming the key (a default the host cannot hold is lowered)
    agent_connections = cfg.http.max_agent_connections if cfg.agents else None  # their socket's
    max_connections = ensure_open_files(
        cfg.http.max_connections,
        explicit="max_connections" in cfg.http.model_fields_set,
        besides=agent_connections or 0,
    )
    app = build_app(cfg)
    uv = uvicorn.Config(
        app,
        host=cfg.http.host,
        port=cfg.http.port,
        log_level=cfg.gateway.log_level.lower(),
        access_log=False,  # ours is structured (AccessLog)
        log_config=None,  # keep the gateway's logging set-up
        # slow headers are cut off, open connections bounded
        http=http_protocol(
            cfg.http.header_timeout_s, cfg.http.max_header_bytes, max_connections, agent_connections
        ),
        loop="uvloop",  # libuv: less CPU per socket read and write than asyncio's selector loop
        # uvicorn's default believes X-Forwarded-For/-Proto from 127.0.0.1: any local caller
        # (and, through HAProxy, which passes them on, any caller of the workers) could write
        # the access log's client address. No proxy the gateway trusts sets them.
        proxy_headers=False,
    )
    sockets = [uv.bind_socket()]
    agent_path = None
    if app.state.agent_socket is not None:  # hosted agents: the same app on their Unix socket
        sockets.append(app.state.agent_socket)
        agent_path = app.state.agent_socket.getsockname()
    keep_fds_from_children()
    _Uvicorn(uv, agent_path).run(sockets=sockets)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, removing the hosted agents' socket folder as it stops: uvicorn then
    re-raises the signal it stopped on, and SIGTERM's default action ends the process before
    ``atexit`` runs (every ``symbi serve`` stopped that way left its folder)."""

    def __init__(self, config: uvicorn.Config, agent_path: str | None) -> None:
        super().__init__(config)
        self.agent_path = agent_path

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets=sockets)
        finally:
            if self.agent_path is not None:
                remove_agent_folder(self.agent_path)


def keep_fds_from_children() -> None:
    """Mark every descriptor above stderr close-on-exec: nothing this process holds reaches
    the upstreams, hosted agents and sandboxes it starts.

    libuv's spawn (uvloop: every child of ``symbi serve``) closes only close-on-exec
    descriptors, whatever ``close_fds`` says. Two were inheritable: uvicorn's listening socket
    (marked so for its own workers, unused here: an upstream could accept() the gateway's
    clients, API keys in their headers) and whatever the gateway's own parent left open
    (a supervisor's pipe or socket). Python's own descriptors are close-on-exec from birth
    (PEP 446), so once at start, after the listener is bound, is enough."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
                os.set_inheritable(fd, False)
