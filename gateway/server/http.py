"""``symbi serve``: the gateway over streamable HTTP (Starlette + uvicorn), 127.0.0.1 by default."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any, AsyncIterator

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.config.model import Config
from gateway.context import Principal
from gateway.server.front import build_server

_logger = logging.getLogger("symbi.http")


def security_settings(config: Config) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: Host/Origin must be this server."""
    port = config.http.port
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1:*", "localhost:*", "[::1]:*"}
    hosts.update(config.http.allowed_hosts)
    origins = {f"http://{h}" for h in hosts} | {f"https://{h}" for h in config.http.allowed_hosts}
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=sorted(hosts), allowed_origins=sorted(origins)
    )


class _PrincipalMiddleware:
    """Until a request is authenticated it has no principal: 401 unless an anonymous one is named."""

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "symbi.principal" not in scope:
            anon = self.config.http.anonymous_principal
            if anon is None:
                resp = JSONResponse(
                    {"error": "unauthorized", "error_description": "credentials required"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="symbi"'},
                )
                await resp(scope, receive, send)
                return
            scope["symbi.principal"] = Principal(id=anon, kind="anonymous")
        await self.app(scope, receive, send)


def build_app(config: Config, *, gateway_holder: list[Gateway] | None = None) -> Starlette:
    holder: list[Gateway] = gateway_holder if gateway_holder is not None else []

    def factory(bus: Any) -> Gateway:
        gw = make_gateway(config, bus)
        holder.append(gw)
        return gw

    server = build_server(config, factory)
    manager = StreamableHTTPSessionManager(
        app=server,
        json_response=config.http.json_response,
        security_settings=security_settings(config),
        session_idle_timeout=config.http.session_idle_timeout_s,
        max_request_body_size=config.http.max_request_bytes,
        max_sessions=config.http.max_sessions,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        gw = holder[-1] if holder else None
        if gw is None:
            return JSONResponse({"ready": False, "reason": "gateway not started"}, status_code=503)
        ups = {n: u.state for n, u in gw.upstreams.items()}
        ready = all(s == "up" for s in ups.values())
        return JSONResponse({"ready": ready, "config": True, "upstreams": ups}, status_code=200 if ready else 503)

    mcp_app = _PrincipalMiddleware(StreamableHTTPASGIApp(manager), config)
    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(config.http.path, endpoint=mcp_app, methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )


def run_http(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    cfg = config
    if port is not None or host is not None:
        http = config.http.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
        cfg = config.model_copy(update={"http": http})
    app = build_app(cfg)
    uvicorn.run(app, host=cfg.http.host, port=cfg.http.port, log_level=cfg.gateway.log_level.lower(), access_log=False)


_ = json
