"""The MCP front: a low-level SDK ``Server`` whose handlers turn requests into gateway calls.

The same ``Server`` serves stdio and streamable HTTP, in both protocol eras (the SDK
bridges the handshake era and 2026-07-28). Every handler that touches an upstream goes
through ``Gateway.call`` (the chain: audit, verification, arguments, policy), and every
error is turned into an MCP result by ``gateway.boundary``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio
from mcp import types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway import __version__
from gateway.app import Gateway
from gateway.boundary import error_result, protocol_error
from gateway.config.model import Config
from gateway.context import CallContext, Principal
from gateway.errors import CatalogError, GatewayError, PolicyDenied, UpstreamError
from gateway.listen import ListenHub

_logger = logging.getLogger("symbi.server")
_T = TypeVar("_T")

GatewayFactory = Callable[[ListenHub], Gateway]


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


def http_session_key(sid: str) -> str:
    """The agent session key of the HTTP session ``sid`` (also used when it closes)."""
    return f"http:{sid}"


def agent_session_key(ctx: ServerRequestContext[Any], principal: Principal) -> str:
    """The session part of an agent's identity, from what the gateway itself vouches for.

    stdio: one client per process. HTTP with a session: the ``mcp-session-id`` the SDK issued
    (bound to the credential that opened it). Stateless HTTP (2026-07-28): the credential;
    there the SDK checks no session id, so a header sent with such a request is the client's
    choice and names nothing (else every forged id would be a new agent).
    """
    request = ctx.request
    if request is None:
        return "stdio"
    sid = request.headers.get("mcp-session-id")
    era = request.headers.get("mcp-protocol-version")
    if sid and (era is None or era in HANDSHAKE_PROTOCOL_VERSIONS):  # the SDK's session routing
        return http_session_key(sid)
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
    request = ctx.request
    if request is not None:
        sid = request.headers.get("mcp-session-id")
        if sid:
            return str(sid)
    return (
        f"session-{id(ctx.session._connection) if hasattr(ctx.session, '_connection') else id(ctx.session)}"
    )


def build_server(config: Config, make_gateway: GatewayFactory) -> Server[Gateway]:
    """The MCP server object; its lifespan runs one ``Gateway`` for all connections."""

    hub = ListenHub()  # 2026-era listen streams, shared with the gateway that pushes to them
    current: list[Gateway] = []

    @contextlib.asynccontextmanager
    async def lifespan(_server: Server[Gateway]) -> AsyncIterator[Gateway]:
        gw = make_gateway(hub)
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
        gw.remember_downstream(ctx.session, lambda: principal_for(ctx, gw))
        return gw

    async def listen(
        ctx: ServerRequestContext[Gateway], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A 2026-era listen stream, bound to its principal: it hears only of lists it can see
        and of resources it may read (URIs it may not read are left out of the ack)."""
        gw = ctx.lifespan_context
        try:
            principal = principal_for(ctx, gw)
        except GatewayError as e:
            raise protocol_error(e) from None
        asked = params.notifications
        uris = list(asked.resource_subscriptions or ())
        if uris:
            pairs = []
            for uri in uris:
                with contextlib.suppress(CatalogError):
                    pairs.append((uri, gw.catalog.subscription_owner(uri)))
            ok = await gw.allowed_targets(principal, "resources/read", pairs)
            refused = [u for u in uris if u not in ok]
            if refused:
                gw.events.emit("request.denied", {"method": "subscriptions/listen", "kind": "resources/read",
                                                  "targets": refused}, principal=principal.id, agent=principal.agent)
            kept = [u for u in uris if u in ok] or None
            params = params.model_copy(update={"notifications": asked.model_copy(update={"resource_subscriptions": kept})})
        return await gw.listen.serve(ctx, params, principal, gw.watch_for_stream)

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
        if _is_admin(principal):
            resources.append(STATUS_RESOURCE)
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
        if params.uri == STATUS_RESOURCE.uri:
            return _read_status(gw, principal_for(ctx, gw))
        try:
            owner = _find_or_refuse(ctx, gw, "resources/read", params.uri, lambda: gw.catalog.resource_owner(params.uri))
        except CatalogError as e:
            # SEP-2164: an unknown resource is -32602 with the URI in data
            raise MCPError(
                code=types.INVALID_PARAMS, message=e.message, data={"uri": params.uri, "code": e.code}
            ) from None
        result: types.ReadResourceResult | types.InputRequiredResult = await _through_chain(
            ctx, gw, "resources/read", params.uri, owner, params, {})
        return result

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
        ctx: ServerRequestContext[Gateway], method: str, uri: str, fn: Callable[[Any], Any], on: bool
    ) -> types.EmptyResult:
        gw = gw_of(ctx)
        try:
            owner = _find_or_refuse(ctx, gw, method, uri, lambda: gw.catalog.subscription_owner(uri))
            # subscribing needs the right to read
            await _require(ctx, gw, "resources/read", uri, owner, method=method)
            if not await gw.watch_resource(owner, uri, principal_for(ctx, gw), ctx, on):
                await gw.with_upstream(owner, fn, ctx)
        except Exception as e:  # noqa: BLE001
            raise protocol_error(e) from None
        who = principal_for(ctx, gw)
        gw.events.emit("request.allowed", {"method": method, "target": uri, "upstream": owner},
                       principal=who.id, agent=who.agent)
        return types.EmptyResult()

    def _find_or_refuse(
        ctx: ServerRequestContext[Gateway], gw: Gateway, method: str, target: str, find: Callable[[], _T]
    ) -> _T:
        """What the catalogue has for ``target``; an unknown one is refused on the record."""
        try:
            return find()
        except CatalogError as e:
            who = principal_for(ctx, gw)
            gw.events.emit("request.refused", {"method": method, "target": target, "error_code": e.code,
                                               "reason": e.message}, principal=who.id, agent=who.agent)
            raise

    async def _allowed(
        ctx: ServerRequestContext[Gateway], gw: Gateway, kind: str, pairs: list[tuple[str, str]]
    ) -> tuple[Principal, set[str]]:
        """The caller, and which of (target, upstream) the policy lets it use (listings, checks)."""
        try:
            principal = principal_for(ctx, gw)
            return principal, await gw.allowed_targets(principal, kind, pairs)
        except GatewayError as e:
            raise protocol_error(e) from None

    async def _require(
        ctx: ServerRequestContext[Gateway], gw: Gateway, kind: str, target: str, owner: str, *, method: str
    ) -> None:
        principal, ok = await _allowed(ctx, gw, kind, [(target, owner)])
        if target not in ok:
            # a denied completion / subscription is on the record like a denied call
            gw.events.emit("request.denied", {"method": method, "kind": kind, "target": target, "upstream": owner},
                           principal=principal.id, agent=principal.agent)
            raise PolicyDenied(f"policy denies {principal.id} the use of {target}")

    async def subscribe(
        ctx: ServerRequestContext[Gateway], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        return await _on_owner(ctx, "resources/subscribe", params.uri,
                               lambda up: up.session.subscribe_resource(params.uri), True)

    async def unsubscribe(
        ctx: ServerRequestContext[Gateway], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        return await _on_owner(ctx, "resources/unsubscribe", params.uri,
                               lambda up: up.session.unsubscribe_resource(params.uri), False)

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
            owner = _find_or_refuse(ctx, gw, "prompts/get", params.name, lambda: gw.catalog.prompt(params.name).upstream)
        except Exception as e:  # noqa: BLE001
            raise protocol_error(e) from None
        prompt: types.GetPromptResult | types.InputRequiredResult = await _through_chain(
            ctx, gw, "prompts/get", params.name, owner, params, dict(params.arguments or {}))
        return prompt

    async def completion(
        ctx: ServerRequestContext[Gateway], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        gw = gw_of(ctx)
        try:
            ref = params.ref
            if isinstance(ref, types.PromptReference):
                name = ref.name
                entry = _find_or_refuse(ctx, gw, "completion/complete", name, lambda: gw.catalog.prompt(name))
                owner, ref = entry.upstream, ref.model_copy(update={"name": entry.original_name})
                kind, target = "prompts/get", entry.name
            else:
                uri = ref.uri
                owner = _find_or_refuse(ctx, gw, "completion/complete", uri, lambda: gw.catalog.template_owner(uri))
                kind, target = "resources/read", ref.uri
            # completing a prompt or template needs the right to use it
            await _require(ctx, gw, kind, target, owner, method="completion/complete")
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
        # An upstream's log level is shared by every caller: the policy decides per upstream
        # (kind "logging/setLevel", target = the upstream's name), and the change is audited.
        gw = gw_of(ctx)
        loggable = [up for up in gw.upstreams.values()
                    if up.state == "up" and up._session and (caps := up._session.server_capabilities) is not None
                    and caps.logging is not None]
        principal, ok = await _allowed(ctx, gw, "logging/setLevel", [(up.name, up.name) for up in loggable])
        applied: list[str] = []
        for up in loggable:
            if up.name in ok:
                with contextlib.suppress(Exception):
                    await up.session.set_logging_level(params.level)
                    applied.append(up.name)
        denied = sorted(up.name for up in loggable if up.name not in ok)
        gw.events.emit("logging.set_level", {"level": params.level, "applied": sorted(applied), "denied": denied},
                       principal=principal.id, agent=principal.agent)
        # not an error: clients (the Inspector...) send it on connect; a denied upstream is left alone
        return types.EmptyResult()

    server: Server[Gateway] = Server(
        config.gateway.name,
        version=__version__,
        instructions="Symbi MCP security gateway: tools from several upstream servers, verified and policy-checked.",
        lifespan=lifespan,
        get_tool_input_schema=input_schema,
        on_subscriptions_listen=listen,
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


STATUS_RESOURCE = types.Resource(
    uri="symbi://status",
    name="symbi-status",
    description="The gateway's HealthStatus: components, agents, scheduler, recent errors (admin principals only).",
    mime_type="application/json",
)


def _read_status(gw: Gateway, principal: Principal) -> types.ReadResourceResult:
    import json

    from gateway.runtime.status import get_system_status

    if not _is_admin(principal):
        gw.events.emit("status.read_denied", {"uri": STATUS_RESOURCE.uri}, principal=principal.id,
                       agent=principal.agent)
        raise MCPError(code=types.INVALID_PARAMS, message="symbi://status is for admin principals only")
    text = json.dumps(get_system_status(gw), default=str)
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=STATUS_RESOURCE.uri, mime_type="application/json", text=text)]
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
