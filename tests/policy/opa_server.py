"""An OPA-compatible Data API server on 127.0.0.1 for the remote-engine tests.

It stands in for the `opa` binary, which no registry reachable here ships: the decisions
come from the real OPA engine (opa-golib-python-bindings, the Go `rego` package) behind the
same endpoint `opa run --server` exposes: ``POST /v1/data/<path>`` with ``{"input": ...}``
answering ``{"result": ...}`` (or ``{}`` when the document is undefined). ``symbi policy push``
uses the write side: ``PUT /v1/policies/<id>`` (Rego text; compiled on upload, a broken one
is HTTP 400 like OPA's) and ``PUT /v1/data/<path>`` (JSON); the engine is rebuilt from what
was pushed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send


class _TokenGate:
    """OPA's token authentication with its basic authorization: the bearer token or 401."""

    def __init__(self, app: ASGIApp, server: OpaServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.server.token
        if scope["type"] == "http" and token is not None:
            got = Headers(scope=scope).get("authorization")
            if got != f"Bearer {token}":
                body = {"code": "unauthorized", "message": "the request is unauthorized"}
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class OpaServer:
    def __init__(
        self,
        engine: Any,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        token: str | None = None,
    ) -> None:
        self.engine = engine  # None: empty until something is pushed
        # as `opa run --server --authentication=token --authorization=basic`: a request without
        # this bearer token is 401 (None: anyone is let in, OPA's default)
        self.token = token
        self.delay_s = 0.0
        self.requests = 0
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        app = Starlette(
            routes=[
                Route("/v1/data/{path:path}", self._data, methods=["POST"]),
                Route("/v1/data/{path:path}", self._put_data, methods=["PUT"]),
                Route("/v1/policies/{id:path}", self._put_policy, methods=["PUT"]),
                Route("/v1/policies", self._list_policies, methods=["GET"]),
            ],
            middleware=[Middleware(_TokenGate, server=self)],
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        scheme = "https" if certfile else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
            timeout_graceful_shutdown=1,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    async def _list_policies(self, request: Request) -> JSONResponse:
        return JSONResponse({"result": [{"id": pid, "raw": text} for pid, text in self.policies.items()]})

    async def _data(self, request: Request) -> JSONResponse:
        from opa_bindings import OpaUndefinedError

        self.requests += 1
        body = await request.json()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        path = request.path_params["path"].strip("/").replace("/", ".")
        if self.engine is None:
            return JSONResponse({})  # nothing pushed yet: every document is undefined
        try:
            result = await anyio.to_thread.run_sync(self.engine.eval_document, path, body.get("input"))
        except OpaUndefinedError:
            return JSONResponse({})
        return JSONResponse({"result": result})

    def _rebuild(self, policies: dict[str, str], data: dict[str, Any]) -> JSONResponse | None:
        from opa_bindings import OpaEngine, OpaError

        engine = OpaEngine()
        try:
            for pid, text in policies.items():
                engine.add_policy(pid, text)
            engine.add_data(data)
        except OpaError as e:
            return JSONResponse({"code": "invalid_parameter", "message": str(e)}, status_code=400)
        self.engine, self.policies, self.data = engine, policies, data
        return None

    async def _put_policy(self, request: Request) -> JSONResponse:
        text = (await request.body()).decode()
        return self._rebuild({**self.policies, request.path_params["id"]: text}, self.data) or JSONResponse(
            {}
        )

    async def _put_data(self, request: Request) -> Response:
        data = dict(self.data)
        *parents, leaf = request.path_params["path"].strip("/").split("/")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = await request.json()
        return self._rebuild(self.policies, data) or Response(status_code=204)

    def __enter__(self) -> OpaServer:  # noqa: PYI034
        self._thread.start()
        end = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > end or not self._thread.is_alive():
                raise RuntimeError("OPA stand-in server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
