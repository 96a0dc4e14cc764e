"""The MCP front: a low-level SDK ``Server`` whose handlers turn requests into gateway calls.

The same ``Server`` serves stdio and streamable HTTP, in both protocol eras (the SDK
bridges the handshake era and 2026-07-28). ``Front`` has one method per MCP request; every
handler that touches an upstream goes through ``Gateway.call`` (the chain: audit,
verification, arguments, policy) or a policy check, and the decorators of
``gateway.boundary`` turn every error into an MCP result or a JSON-RPC error.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import anyio
from mcp import types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

from gateway import __version__
from gateway.app import Gateway
from gateway.boundary import as_protocol_error, as_tool_result, without_gateway_meta
from gateway.catalog import CatalogTool
from gateway.config.model import Config
from gateway.context import CallContext, CallKind, Principal, is_admin
from gateway.errors import CatalogError, GatewayError, PolicyDenied, StateUnavailable
from gateway.events import Event
from gateway.listen import ListenHub
from gateway.server.listwire import ToolListWire
from gateway.server.paging import ToolPager, config_cursor_key
from gateway.server.principals import principal_for, session_id_of
from gateway.upstream.eras import modern
from gateway.upstream.session import Upstream

GatewayFactory = Callable[[ListenHub], Gateway]
Ctx = ServerRequestContext[Gateway]
_T = TypeVar("_T")

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


class Front:
    """The MCP request handlers; the server's lifespan runs one ``Gateway`` for all connections."""

    def __init__(self, config: Config, make_gateway: GatewayFactory) -> None:
        self.config = config
        self._make_gateway = make_gateway
        # 2026-era listen streams, shared with the gateway that pushes to them
        self.hub = ListenHub(max_per_principal=config.http.max_listens_per_principal)
        self._running: list[Gateway] = []
        self._pager: ToolPager | None = None  # tools/list pages: keyed once the data dir is secured

    def server(self) -> Server[Gateway]:
        # logging/setLevel stays for the handshake-era (2025) clients that send it; the SDK
        # would warn at every start that the capability is deprecated since 2026-07-28 (SEP-2577)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The logging capability is deprecated", MCPDeprecationWarning)
            return self._server()

    def _server(self) -> Server[Gateway]:
        server = self._sdk_server()
        if self.config.mcp.list_fast_path:  # innermost so far: the SDK's SERVER span wraps it
            server.middleware.append(ToolListWire(server, self.tool_page, self._catalogue_size))
        return server

    def _sdk_server(self) -> Server[Gateway]:
        return Server(
            self.config.gateway.name,
            version=__version__,
            instructions=(
                "Symbi MCP security gateway: tools from several upstream servers, verified and policy-checked."
            ),
            lifespan=self.lifespan,
            get_tool_input_schema=self.input_schema,
            on_subscriptions_listen=self.listen,
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.completion,
            on_set_logging_level=self.set_level,
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _server: Server[Gateway]) -> AsyncIterator[Gateway]:
        gw = self._make_gateway(self.hub)
        async with gw.running():
            if self._pager is None:  # the cursor key derives from the replicas' shared secret
                self._pager = ToolPager(self.config.mcp.list_page_size, config_cursor_key(self.config))
            self._running.append(gw)
            try:
                yield gw
            finally:
                self._running.remove(gw)

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        # 2026 HTTP header validation looks schemas up here instead of re-listing tools.
        for gw in self._running:
            entry = gw.catalog.tools.get(name)
            if entry is not None:
                return entry.tool.input_schema
        return None

    # -- helpers -----------------------------------------------------------------------------

    def _gateway(self, ctx: Ctx) -> Gateway:
        gw = ctx.lifespan_context
        gw.remember_downstream(ctx.session, lambda: principal_for(ctx, gw))
        return gw

    def _call(self, ctx: Ctx, kind: CallKind, target: str, params: Any, **fields: Any) -> CallContext:
        gw = self._gateway(ctx)
        principal = principal_for(ctx, gw)
        return CallContext(
            principal=principal,
            agent=gw.agents.info(principal.agent),
            kind=kind,
            target=target,
            session_id=session_id_of(ctx),
            downstream=ctx,
            # defined by 2026-07-28 only: a handshake-era client's are dropped (the gateway
            # answers input requests for it: gateway.upstream.eras), never passed on unseen
            input_responses=params.input_responses if modern(ctx) else None,
            request_state=params.request_state if modern(ctx) else None,
            **fields,
        )

    async def _allowed(self, ctx: Ctx, kind: str, pairs: list[tuple[str, str]]) -> tuple[Principal, set[str]]:
        """The caller, and which of (target, upstream) the policy lets it use (listings, checks)."""
        gw = self._gateway(ctx)
        principal = principal_for(ctx, gw)
        return principal, await gw.allowed_targets(principal, kind, pairs)

    async def _require(self, ctx: Ctx, kind: str, target: str, owner: str, *, method: str) -> None:
        principal, ok = await self._allowed(ctx, kind, [(target, owner)])
        if target not in ok:
            # a denied completion / subscription is on the record like a denied call
            self._gateway(ctx).events.emit(
                Event.REQUEST_DENIED,
                {"method": method, "kind": kind, "target": target, "upstream": owner},
                principal=principal.id,
                agent=principal.agent,
            )
            raise PolicyDenied(f"policy denies {principal.id} the use of {target}")

    def _find_or_refuse(self, ctx: Ctx, method: str, target: str, find: Callable[[], _T]) -> _T:
        """What the catalogue has for ``target``; an unknown one is refused on the record."""
        try:
            return find()
        except CatalogError as e:
            self._refused(ctx, method, target, e)
            raise

    def _refused(self, ctx: Ctx, method: str, target: str, e: GatewayError) -> None:
        gw = self._gateway(ctx)
        who = principal_for(ctx, gw)
        gw.events.emit(
            Event.REQUEST_REFUSED,
            {"method": method, "target": target, "error_code": e.code, "reason": e.message},
            principal=who.id,
            agent=who.agent,
        )

    async def _recall(self, ctx: Ctx, method: str, uri: str) -> None:
        """Before routing a URI nobody lists: the links other replicas' upstreams handed out
        (``HandedOut.recall``); a shared state that cannot say is refused on the record."""
        gw = self._gateway(ctx)
        if uri in gw.catalog.resources:
            return
        try:
            await gw.live.handed_out.recall(uri, gw.upstreams)
        except StateUnavailable as e:
            self._refused(ctx, method, uri, e)
            raise

    # -- 2026 listen streams ---------------------------------------------------------------------

    @as_protocol_error
    async def listen(
        self, ctx: Ctx, params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        """A 2026-era listen stream, bound to its principal: it hears only of lists it can see
        and of resources it may read (URIs it may not read are left out of the ack)."""
        gw: Gateway = ctx.lifespan_context
        principal = principal_for(ctx, gw)
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
                gw.events.emit(
                    Event.REQUEST_DENIED,
                    {"method": "subscriptions/listen", "kind": "resources/read", "targets": refused},
                    principal=principal.id,
                    agent=principal.agent,
                )
            kept = [u for u in uris if u in ok] or None
            params = params.model_copy(
                update={"notifications": asked.model_copy(update={"resource_subscriptions": kept})}
            )
        return await gw.listen.serve(ctx, params, principal, gw.watch_for_stream)

    # -- tools -------------------------------------------------------------------------------

    @as_protocol_error
    async def tool_page(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> tuple[list[CatalogTool], str | None]:
        """The tools of one ``tools/list`` page the caller may see, and the next page's cursor
        (the SDK's handler below, and ``ToolListWire``'s answer in wire form)."""
        gw = self._gateway(ctx)
        cursor = params.cursor if params is not None else None
        pager = self._pager
        if pager is None:  # no lifespan, no gateway: unreachable, and never an unkeyed cursor
            raise CatalogError("tools/list before the gateway started")
        return await pager.page(gw, principal_for(ctx, gw), cursor)

    async def list_tools(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        page, next_cursor = await self.tool_page(ctx, params)
        return types.ListToolsResult(tools=[e.tool for e in page], next_cursor=next_cursor)

    def _catalogue_size(self) -> int:
        return max((len(gw.catalog.tools) for gw in self._running), default=0)

    @as_tool_result
    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        call = self._call(ctx, "tools/call", params.name, params, arguments=dict(params.arguments or {}))
        gw: Gateway = ctx.lifespan_context  # remembered by _call
        result: types.CallToolResult | types.InputRequiredResult = await gw.call(call)
        return result

    # -- resources ---------------------------------------------------------------------------

    @as_protocol_error
    async def list_resources(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        gw = self._gateway(ctx)
        entries = list(gw.catalog.resources.values())
        principal, ok = await self._allowed(ctx, "resources/read", [(r.uri, up) for up, r in entries])
        resources = [r for _, r in entries if r.uri in ok]
        if gw.audit is not None and is_admin(principal):
            resources.append(AUDIT_RESOURCE)
        if is_admin(principal):
            resources.append(STATUS_RESOURCE)
        return types.ListResourcesResult(resources=resources)

    @as_protocol_error
    async def list_resource_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        templates = self._gateway(ctx).catalog.templates
        _, ok = await self._allowed(ctx, "resources/read", [(t.uri_template, up) for up, t, _ in templates])
        return types.ListResourceTemplatesResult(
            resource_templates=[t for _, t, _ in templates if t.uri_template in ok]
        )

    @as_protocol_error
    async def read_resource(
        self, ctx: Ctx, params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        gw = self._gateway(ctx)
        if params.uri == AUDIT_RESOURCE.uri:
            return await self._read_audit(gw, principal_for(ctx, gw))
        if params.uri == STATUS_RESOURCE.uri:
            return self._read_status(gw, principal_for(ctx, gw))
        try:
            await self._recall(ctx, "resources/read", params.uri)
            owner = self._find_or_refuse(
                ctx, "resources/read", params.uri, lambda: gw.catalog.resource_owner(params.uri)
            )
        except CatalogError as e:
            # SEP-2164: an unknown resource is -32602 with the URI in data
            raise MCPError(
                code=types.INVALID_PARAMS, message=e.message, data={"uri": params.uri, "code": e.code}
            ) from None
        call = self._call(ctx, "resources/read", params.uri, params, upstream=gw.upstream_info(owner))
        result: types.ReadResourceResult | types.InputRequiredResult = await gw.call(call)
        return result

    @as_protocol_error
    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        await self._on_owner(
            ctx, "resources/subscribe", params.uri, lambda up: up.session.subscribe_resource(params.uri), True
        )
        return types.EmptyResult()

    @as_protocol_error
    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        await self._on_owner(
            ctx,
            "resources/unsubscribe",
            params.uri,
            lambda up: up.session.unsubscribe_resource(params.uri),
            False,
        )
        return types.EmptyResult()

    async def _on_owner(
        self, ctx: Ctx, method: str, uri: str, fn: Callable[[Upstream], Any], on: bool
    ) -> None:
        gw = self._gateway(ctx)
        await self._recall(ctx, method, uri)
        owner = self._find_or_refuse(ctx, method, uri, lambda: gw.catalog.subscription_owner(uri))
        await self._require(
            ctx, "resources/read", uri, owner, method=method
        )  # subscribing needs the right to read
        who = principal_for(ctx, gw)
        if not await gw.watch_resource(owner, uri, who, ctx, on):
            await gw.pool.with_upstream(owner, fn, ctx, principal=who)
        gw.events.emit(
            Event.REQUEST_ALLOWED,
            {"method": method, "target": uri, "upstream": owner},
            principal=who.id,
            agent=who.agent,
        )

    def _read_status(self, gw: Gateway, principal: Principal) -> types.ReadResourceResult:
        from gateway.runtime.status import get_system_status

        if not is_admin(principal):
            gw.events.emit(
                Event.STATUS_READ_DENIED,
                {"uri": STATUS_RESOURCE.uri},
                principal=principal.id,
                agent=principal.agent,
            )
            raise MCPError(code=types.INVALID_PARAMS, message="symbi://status is for admin principals only")
        text = json.dumps(get_system_status(gw), default=str)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=STATUS_RESOURCE.uri, mime_type="application/json", text=text)
            ]
        )

    async def _read_audit(self, gw: Gateway, principal: Principal) -> types.ReadResourceResult:
        if gw.audit is None:
            raise MCPError(
                code=types.INVALID_PARAMS, message="the audit log is off (security.unsafe_disable_audit)"
            )
        if not is_admin(principal):
            gw.events.emit(
                Event.AUDIT_READ_DENIED,
                {"uri": AUDIT_RESOURCE.uri},
                principal=principal.id,
                agent=principal.agent,
            )
            raise MCPError(code=types.INVALID_PARAMS, message="audit://recent is for admin principals only")
        log = gw.audit
        await anyio.to_thread.run_sync(lambda: log.flush(timeout=5))  # what was emitted is readable
        text = json.dumps(log.recent(100), default=str)
        return types.ReadResourceResult(
            contents=[
                types.TextResourceContents(uri=AUDIT_RESOURCE.uri, mime_type="application/json", text=text)
            ]
        )

    # -- prompts and completion --------------------------------------------------------------

    @as_protocol_error
    async def list_prompts(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListPromptsResult:
        entries = list(self._gateway(ctx).catalog.prompts.values())
        _, ok = await self._allowed(ctx, "prompts/get", [(p.name, p.upstream) for p in entries])
        return types.ListPromptsResult(prompts=[p.prompt for p in entries if p.name in ok])

    @as_protocol_error
    async def get_prompt(
        self, ctx: Ctx, params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        gw = self._gateway(ctx)
        owner = self._find_or_refuse(
            ctx, "prompts/get", params.name, lambda: gw.catalog.prompt(params.name).upstream
        )
        call = self._call(
            ctx,
            "prompts/get",
            params.name,
            params,
            arguments=dict(params.arguments or {}),
            upstream=gw.upstream_info(owner),
        )
        result: types.GetPromptResult | types.InputRequiredResult = await gw.call(call)
        return result

    @as_protocol_error
    async def completion(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        gw = self._gateway(ctx)
        ref = params.ref
        kind: CallKind
        method = "completion/complete"
        if isinstance(ref, types.PromptReference):
            name = ref.name
            entry = self._find_or_refuse(ctx, method, name, lambda: gw.catalog.prompt(name))
            owner, ref = entry.upstream, ref.model_copy(update={"name": entry.original_name})
            kind, target = "prompts/get", entry.name
        else:
            uri = ref.uri
            owner = self._find_or_refuse(ctx, method, uri, lambda: gw.catalog.template_owner(uri))
            kind, target = "resources/read", ref.uri
        # completing a prompt or template needs the right to use it
        await self._require(ctx, kind, target, owner, method=method)
        context_args = params.context.arguments if params.context is not None else None
        result: types.CompleteResult = await gw.pool.with_upstream(
            owner,
            lambda up: up.session.complete(ref, params.argument.model_dump(), context_arguments=context_args),
            ctx,
            principal=principal_for(ctx, gw),  # its upstream's requests meanwhile: decided for it
        )
        return without_gateway_meta(result)

    @as_protocol_error
    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        # An upstream's log level is shared by every caller: the policy decides per upstream
        # (kind "logging/setLevel", target = the upstream's name), and the change is audited.
        gw = self._gateway(ctx)
        loggable = [
            up
            for up in gw.upstreams.values()
            if (caps := up.server_capabilities) is not None and caps.logging is not None
        ]
        principal, ok = await self._allowed(ctx, "logging/setLevel", [(up.name, up.name) for up in loggable])
        applied: list[str] = []
        for up in loggable:
            if up.name in ok:
                # best effort: a failure of one upstream is not the client's concern
                with contextlib.suppress(Exception):
                    await up.session.set_logging_level(params.level)
                    applied.append(up.name)
        denied = sorted(up.name for up in loggable if up.name not in ok)
        gw.events.emit(
            Event.LOGGING_SET_LEVEL,
            {"level": params.level, "applied": sorted(applied), "denied": denied},
            principal=principal.id,
            agent=principal.agent,
        )
        # not an error: clients (the Inspector...) send it on connect; a denied upstream is left alone
        return types.EmptyResult()


def build_server(config: Config, make_gateway: GatewayFactory) -> Server[Gateway]:
    """The MCP server object of ``Front`` (its lifespan runs one ``Gateway`` for all connections)."""
    return Front(config, make_gateway).server()


def init_options(server: Server[Gateway]) -> Any:
    return server.create_initialization_options(
        NotificationOptions(tools_changed=True, prompts_changed=True, resources_changed=True)
    )
