"""The MCP front: a low-level SDK ``Server`` whose handlers turn requests into gateway calls.

The same ``Server`` serves stdio and streamable HTTP, in both protocol eras (the SDK
bridges the handshake era and 2026-07-28). Every handler that touches an upstream goes
through ``Gateway.call`` (the chain: audit, verification, arguments, policy), and every
error is turned into an MCP result by ``gateway.boundary``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from mcp import types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway import __version__
from gateway.app import Gateway
from gateway.boundary import error_result, protocol_error
from gateway.config.model import Config
from gateway.context import CallContext, Principal
from gateway.errors import CatalogError, GatewayError, PolicyDenied, UpstreamError

_logger = logging.getLogger("symbi.server")

GatewayFactory = Callable[[InMemorySubscriptionBus], Gateway]


def stdio_principal(config: Config) -> Principal:
    p = config.gateway.stdio_principal
    return Principal(id=p.id, kind=p.kind, roles=tuple(p.roles))


def authenticated_principal(ctx: ServerRequestContext[Any], config: Config) -> Principal:
    """Who is calling: the HTTP auth middleware's principal, or the configured stdio one."""
    request = ctx.request
    if request is None:
        return stdio_principal(config)
    principal = request.scope.get("symbi.principal")
    if isinstance(principal, Principal):
        return principal
    # The HTTP front refuses unauthenticated requests before they get here; this is the
    # last line: no principal, no access.
    raise PolicyDenied("no authenticated principal for this request")


def agent_session_key(ctx: ServerRequestContext[Any], principal: Principal) -> str:
    """The session part of an agent's identity, from what the gateway itself vouches for.

    stdio: one client per process. HTTP with a session: the ``mcp-session-id`` the SDK issued
    (bound to the credential that opened it). Stateless HTTP (2026-07-28): the credential.
    """
    request = ctx.request
    if request is None:
        return "stdio"
    sid = request.headers.get("mcp-session-id")
    if sid:
        return f"http:{sid}"
    claims = principal.claims
    if "key_id" in claims:
        return f"key:{claims['key_id']}"
    if "sub" in claims:
        return f"jwt:{claims.get('iss')}:{claims['sub']}"
    return "anonymous"


def client_name_of(ctx: ServerRequestContext[Any]) -> object:
    """The client's declared ``clientInfo.name`` (handshake or 2026 envelope); a label only."""
    params = ctx.session.client_params
    return params.client_info.name if params is not None else None


def principal_for(ctx: ServerRequestContext[Any], gw: Gateway) -> Principal:
    """The caller, bound to the agent the runtime made for its session (``Principal.agent``)."""
    principal = authenticated_principal(ctx, gw.config)
    agent = gw.agents.for_session(principal, client_name_of(ctx), agent_session_key(ctx, principal))
    return dataclasses.replace(principal, agent=agent.id)


def session_id_of(ctx: ServerRequestContext[Any]) -> str | None:
    """The session id the audit log records: always one the gateway made or checked.

    Handshake-era HTTP: the ``mcp-session-id`` the SDK session manager issued, which it
    already checked belongs to this credential. 2026-era HTTP has no server session, so the
    client's header is only a label: it is scoped to the caller (a digest of the qualified
    principal and the label), so no principal can file its calls under another's session.
    """
    request = ctx.request
    if request is None:
        conn = getattr(ctx.session, "_connection", ctx.session)
        return f"session-{id(conn)}"
    label = request.headers.get("mcp-session-id") or ""
    era = request.headers.get("mcp-protocol-version")
    if label and (era is None or era in HANDSHAKE_PROTOCOL_VERSIONS):
        return str(label)  # issued by the session manager, bound to the credential that opened it
    principal = request.scope.get("symbi.principal")
    who = principal.qualified if isinstance(principal, Principal) else ""
    return "caller-" + hashlib.sha256(f"{who}\0{label}".encode()).hexdigest()[:32]


def build_server(config: Config, make_gateway: GatewayFactory) -> Server[Gateway]:
    """The MCP server object; its lifespan runs one ``Gateway`` for all connections."""

    bus = InMemorySubscriptionBus()
    current: list[Gateway] = []

    @contextlib.asynccontextmanager
    async def lifespan(_server: Server[Gateway]) -> AsyncIterator[Gateway]:
        gw = make_gateway(bus)
        async with gw.running():
            current.append(gw)
            try:
                yield gw
            finally:
                current.remove(gw)

    def input_schema(name: str) -> Any:
        # 2026 HTTP header validation looks schemas up here instead of re-listing tools.
        for gw in current:
            entry = gw.catalog.tools.get(name)
            if entry is not None:
                return entry.tool.input_schema
        return None

    def gw_of(ctx: ServerRequestContext[Gateway]) -> Gateway:
        gw = ctx.lifespan_context
        gw.remember_downstream(ctx.session)
        return gw

    async def list_tools(
        ctx: ServerRequestContext[Gateway], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        gw = gw_of(ctx)
        try:
            principal = principal_for(ctx, gw)
            tools = [e.tool for e in await gw.visible_tools(principal)]
        except GatewayError as e:
            raise protocol_error(e) from None
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Gateway], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        gw = gw_of(ctx)
        try:
            principal = principal_for(ctx, gw)
            call = CallContext(
                principal=principal,
                agent=gw.agents.info(principal.agent),
                kind="tools/call",
                target=params.name,
                arguments=dict(params.arguments or {}),
                session_id=session_id_of(ctx),
                downstream=ctx,
                input_responses=params.input_responses,
                request_state=params.request_state,
            )
            result = await gw.call(call)
        except UpstreamError as e:
            upstream_error = getattr(e, "mcp_error", None)
            if isinstance(upstream_error, MCPError):
                raise upstream_error from None  # the upstream's own JSON-RPC error, passed on as is
            return error_result(e)
        except Exception as e:  # noqa: BLE001 - the boundary: every failure becomes isError
            return error_result(e)
        return result  # type: ignore[no-any-return]

    async def list_resources(
        ctx: ServerRequestContext[Gateway], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        gw = gw_of(ctx)
        entries = list(gw.catalog.resources.values())
        principal, ok = await _allowed(ctx, gw, "resources/read", [(r.uri, up) for up, r in entries])
        resources = [r for _, r in entries if r.uri in ok]
        if gw.audit is not None and _is_admin(principal):
            resources.append(AUDIT_RESOURCE)
        return types.ListResourcesResult(resources=resources)

    async def list_resource_templates(
        ctx: ServerRequestContext[Gateway], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        gw = gw_of(ctx)
        pairs = [(t.uri_template, up) for up, t, _ in gw.catalog.templates]
        _, ok = await _allowed(ctx, gw, "resources/read", pairs)
        return types.ListResourceTemplatesResult(
            resource_templates=[t for _, t, _ in gw.catalog.templates if t.uri_template in ok]
        )

    async def read_resource(
        ctx: ServerRequestContext[Gateway], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        gw = gw_of(ctx)
        if params.uri == AUDIT_RESOURCE.uri:
            return await _read_audit(gw, principal_for(ctx, gw))
        try:
            owner = gw.catalog.resource_owner(params.uri)
        except CatalogError as e:
            # SEP-2164: an unknown resource is -32602 with the URI in data
            raise MCPError(
                code=types.INVALID_PARAMS, message=e.message, data={"uri": params.uri, "code": e.code}
            ) from None
        return await _through_chain(ctx, gw, "resources/read", params.uri, owner, params, {})

    async def _through_chain(
        ctx: ServerRequestContext[Gateway],
        gw: Gateway,
        kind: Any,
        target: str,
        owner: str,
        params: Any,
        arguments: dict[str, Any],
    ) -> Any:
        """resources/read and prompts/get: the chain (audit, policy) around the upstream request."""
        try:
            principal = principal_for(ctx, gw)
            call = CallContext(
                principal=principal,
                agent=gw.agents.info(principal.agent),
                kind=kind,
                target=target,
                arguments=arguments,
                session_id=session_id_of(ctx),
                upstream=gw.upstream_info(owner),
                downstream=ctx,
                input_responses=params.input_responses,
                request_state=params.request_state,
            )
            return await gw.call(call)
        except Exception as e:  # noqa: BLE001 - the boundary: every failure becomes a JSON-RPC error
            raise protocol_error(e) from None

    async def _on_owner(
        ctx: ServerRequestContext[Gateway], uri: str, fn: Callable[[Any], Any]
    ) -> types.EmptyResult:
        gw = gw_of(ctx)
        try:
            owner = gw.catalog.resource_owner(uri)
            await _require(ctx, gw, "resources/read", uri, owner)  # subscribing needs the right to read
            await gw.with_upstream(owner, fn, ctx)
        except Exception as e:  # noqa: BLE001
            raise protocol_error(e) from None
        return types.EmptyResult()

    async def _allowed(
        ctx: ServerRequestContext[Gateway], gw: Gateway, kind: str, pairs: list[tuple[str, str]]
    ) -> tuple[Principal, set[str]]:
        """The caller, and which of (target, upstream) the policy lets it use (listings, checks)."""
        try:
            principal = principal_for(ctx, gw)
            return principal, await gw.allowed_targets(principal, kind, pairs)
        except GatewayError as e:
            raise protocol_error(e) from None

    async def _require(ctx: ServerRequestContext[Gateway], gw: Gateway, kind: str, target: str, owner: str) -> None:
        principal, ok = await _allowed(ctx, gw, kind, [(target, owner)])
        if target not in ok:
            raise PolicyDenied(f"policy denies {principal.id} the use of {target}")

    async def subscribe(
        ctx: ServerRequestContext[Gateway], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        return await _on_owner(ctx, params.uri, lambda up: up.session.subscribe_resource(params.uri))

    async def unsubscribe(
        ctx: ServerRequestContext[Gateway], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        return await _on_owner(ctx, params.uri, lambda up: up.session.unsubscribe_resource(params.uri))

    async def list_prompts(
        ctx: ServerRequestContext[Gateway], params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        gw = gw_of(ctx)
        entries = list(gw.catalog.prompts.values())
        _, ok = await _allowed(ctx, gw, "prompts/get", [(p.name, p.upstream) for p in entries])
        return types.ListPromptsResult(prompts=[p.prompt for p in entries if p.name in ok])

    async def get_prompt(
        ctx: ServerRequestContext[Gateway], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        gw = gw_of(ctx)
        try:
            owner = gw.catalog.prompt(params.name).upstream
        except Exception as e:  # noqa: BLE001
            raise protocol_error(e) from None
        return await _through_chain(ctx, gw, "prompts/get", params.name, owner, params, dict(params.arguments or {}))

    async def completion(
        ctx: ServerRequestContext[Gateway], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        gw = gw_of(ctx)
        try:
            ref = params.ref
            if isinstance(ref, types.PromptReference):
                entry = gw.catalog.prompt(ref.name)
                owner, ref = entry.upstream, ref.model_copy(update={"name": entry.original_name})
                kind, target = "prompts/get", entry.name
            else:
                owner = gw.catalog.template_owner(ref.uri)
                kind, target = "resources/read", ref.uri
            # completing a prompt or template needs the right to use it
            await _require(ctx, gw, kind, target, owner)
            return await gw.with_upstream(  # type: ignore[no-any-return]
                owner,
                lambda up: up.session.complete(
                    ref, params.argument.model_dump(), context_arguments=_ctx_args(params)
                ),
                ctx,
            )
        except Exception as e:  # noqa: BLE001
            raise protocol_error(e) from None

    async def set_level(
        ctx: ServerRequestContext[Gateway], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        gw = gw_of(ctx)
        for up in gw.upstreams.values():
            caps = up._session.server_capabilities if up.state == "up" and up._session else None
            if caps is not None and caps.logging is not None:
                with contextlib.suppress(Exception):
                    await up.session.set_logging_level(params.level)
        return types.EmptyResult()

    server: Server[Gateway] = Server(
        config.gateway.name,
        version=__version__,
        instructions="Symbi MCP security gateway: tools from several upstream servers, verified and policy-checked.",
        lifespan=lifespan,
        get_tool_input_schema=input_schema,
        on_subscriptions_listen=ListenHandler(bus),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=completion,
        on_set_logging_level=set_level,
    )
    return server


AUDIT_RESOURCE = types.Resource(
    uri="audit://recent",
    name="audit-recent",
    description="The last 100 events of the gateway's signed audit log (admin principals only).",
    mime_type="application/json",
)


def _is_admin(p: Principal) -> bool:
    return p.kind == "admin" or "admin" in p.roles


async def _read_audit(gw: Gateway, principal: Principal) -> types.ReadResourceResult:
    import json

    from mcp.shared.exceptions import MCPError

    if gw.audit is None:
        raise MCPError(
            code=types.INVALID_PARAMS, message="the audit log is off (security.audit_enabled = false)"
        )
    if not _is_admin(principal):
        gw.events.emit("audit.read_denied", {"uri": AUDIT_RESOURCE.uri}, principal=principal.id)
        raise MCPError(code=types.INVALID_PARAMS, message="audit://recent is for admin principals only")
    log = gw.audit
    await anyio.to_thread.run_sync(lambda: log.flush(timeout=5))  # what was emitted is readable
    events = log.recent(100)
    return types.ReadResourceResult(
        contents=[
            types.TextResourceContents(
                uri=AUDIT_RESOURCE.uri, mime_type="application/json", text=json.dumps(events, default=str)
            )
        ]
    )


def _ctx_args(params: types.CompleteRequestParams) -> dict[str, str] | None:
    ctx = getattr(params, "context", None)
    return getattr(ctx, "arguments", None) if ctx is not None else None


def init_options(server: Server[Gateway]) -> Any:
    return server.create_initialization_options(
        NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
    )
