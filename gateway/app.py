"""The gateway: upstream sessions, the catalogue, and the call chain, in one object.

``Gateway`` is entered once per process (stdio) or once per HTTP session manager, so every
downstream client shares the same upstream sessions. The fronts (``gateway.server``) turn
MCP requests into ``CallContext`` objects and hand them to ``Gateway.call``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import anyio
from mcp import types
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from gateway.catalog import Catalog, CatalogTool, UpstreamListing
from gateway.chain import CallNext, Step, build_chain
from gateway.config.model import Config
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.errors import UpstreamUnavailable
from gateway.events import EventSink, LoggingSink
from gateway.runtime.agents import AgentRegistry
from gateway.upstream.session import DOWNSTREAM_CAPABILITIES, Upstream

_logger = logging.getLogger("symbi.gateway")


class Builtin(Protocol):
    """A tool provider inside the gateway (the sandbox code tools)."""

    name: str

    def tools(self) -> list[types.Tool]: ...

    async def call(self, call: CallContext) -> types.CallToolResult: ...


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        events: EventSink | None = None,
        builtins: list[Builtin] | None = None,
        steps: Callable[[Gateway], list[Step]] | None = None,
        tool_infos: Callable[[Catalog], Awaitable[dict[str, ToolInfo]]] | None = None,
        list_filter: Callable[[Principal, list[ToolInfo]], Awaitable[list[ToolInfo]]] | None = None,
        wrap_command: Any = None,
        bus: InMemorySubscriptionBus | None = None,
        agents: AgentRegistry | None = None,
    ) -> None:
        self.config = config
        self.events: EventSink = events or LoggingSink()
        # Every session is an agent with a gateway-made id (gateway.runtime).
        self.agents = agents or AgentRegistry(self.events)
        self.builtins = {b.name: b for b in builtins or []}
        self.upstreams: dict[str, Upstream] = {}
        self.catalog = Catalog.empty()
        self.bus = bus or InMemorySubscriptionBus()
        # Handshake-era client connections, for pushed list_changed (weak: closed ones go away).
        self._downstream: weakref.WeakSet[Any] = weakref.WeakSet()
        self._steps_factory = steps
        self._tool_infos = tool_infos
        self.list_filter = list_filter
        self._wrap_command = wrap_command
        self._chain: CallNext | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._rebuild_lock = anyio.Lock()
        self.on_catalog_change: list[Callable[[Catalog, Catalog], Awaitable[None]]] = []
        # Long-running helpers started with the gateway (hot reload, approval polling, ...).
        self.background: list[Callable[[Gateway], Awaitable[None]]] = []
        # Optional steps, wired by gateway.assemble; gateway.steps.default_steps orders them.
        self.audit_step: Step | None = None
        self.verify_step: Step | None = None
        self.policy_step: Step | None = None
        self.extra_steps: list[Step] = []
        self.closers: list[Callable[[], Any]] = []
        # Components, for the HTTP front's health and admin views (None when turned off).
        self.audit_log: Any = None
        self.policy_engine: Any = None
        self.sandbox_manager: Any = None
        self.verifier: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        from gateway.steps import default_steps

        steps = (self._steps_factory or default_steps)(self)
        self._chain = build_chain(steps, self._dispatch)
        self.events.emit(
            "gateway.start",
            {"servers": sorted(self.config.servers), "config": str(self.config.source) if self.config.source else None},
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for name, srv in self.config.servers.items():
                    if not srv.enabled:
                        continue
                    up = Upstream(
                        name,
                        srv,
                        self.config,
                        events=self.events,
                        on_change=self._upstream_changed,
                        on_resource_updated=self._resource_updated,
                        wrap_command=self._wrap_command,
                    )
                    up.bind_task_group(tg)
                    self.upstreams[name] = up
                    tg.start_soon(up.run, name=f"upstream-{name}")
                for task in self.background:
                    tg.start_soon(task, self)
                await self._rebuild()
                # Wait (bounded) for the first connection of every upstream, concurrently.
                with anyio.move_on_after(self.config.mcp.connection_timeout_s):
                    async with anyio.create_task_group() as waiters:
                        for up in self.upstreams.values():
                            waiters.start_soon(up.wait_up, self.config.mcp.connection_timeout_s)
                down = [n for n, u in self.upstreams.items() if u.state != "up"]
                if down:
                    _logger.warning("upstream(s) not up at start: %s (retrying in the background)", ", ".join(down))
                try:
                    yield self
                finally:
                    self.events.emit("gateway.stop", {})
                    for up in self.upstreams.values():
                        await up.stop()
                    tg.cancel_scope.cancel()
        finally:
            # also on cancellation or Ctrl-C/SIGTERM: sandboxes, cgroups, audit batches, pins
            for close in self.closers:
                try:
                    close()
                except Exception:
                    _logger.exception("closing a component failed")

    # -- catalogue -------------------------------------------------------------------------

    async def _upstream_changed(self, up: Upstream) -> None:
        await self._rebuild()

    async def _rebuild(self) -> None:
        async with self._rebuild_lock:
            listings = [
                UpstreamListing(
                    name=u.name,
                    pass_through=u.server.pass_through,
                    tools=u.listing.tools,
                    resources=u.listing.resources,
                    templates=u.listing.templates,
                    prompts=u.listing.prompts,
                )
                for u in self.upstreams.values()
                if u.state == "up"
            ]
            listings += [UpstreamListing(name=b.name, pass_through=False, tools=b.tools()) for b in self.builtins.values()]
            new = Catalog.build(listings)
            if self._tool_infos is not None:
                new = Catalog.build(listings, infos=await self._tool_infos(new))
            old, self.catalog = self.catalog, new
            for cb in self.on_catalog_change:
                await cb(old, new)
        await self._announce(old, new)

    async def _announce(self, old: Catalog, new: Catalog) -> None:
        tools_changed = _tool_sig(old) != _tool_sig(new)
        prompts_changed = set(old.prompts) != set(new.prompts)
        res_changed = set(old.resources) != set(new.resources)
        if not (tools_changed or prompts_changed or res_changed):
            return
        for conn in list(self._downstream):
            with contextlib.suppress(Exception):
                if tools_changed:
                    await conn.outbound.notify("notifications/tools/list_changed", None)
                if prompts_changed:
                    await conn.outbound.notify("notifications/prompts/list_changed", None)
                if res_changed:
                    await conn.outbound.notify("notifications/resources/list_changed", None)
        with contextlib.suppress(Exception):
            if tools_changed:
                await self.bus.publish(ToolsListChanged())
            if prompts_changed:
                await self.bus.publish(PromptsListChanged())
            if res_changed:
                await self.bus.publish(ResourcesListChanged())

    async def _resource_updated(self, up: Upstream, uri: str) -> None:
        for conn in list(self._downstream):
            with contextlib.suppress(Exception):
                await conn.outbound.notify("notifications/resources/updated", {"uri": uri})

    async def refresh(self) -> None:
        """Rebuild the catalogue (after an approval or revocation, say)."""
        await self._rebuild()

    def remember_downstream(self, session: ServerSession) -> None:
        conn = getattr(session, "_connection", None)
        if conn is None or conn in self._downstream:
            return
        if conn.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # 2026-era clients hear about changes through subscriptions/listen (self.bus)
        self._downstream.add(conn)

    async def visible_tools(self, principal: Principal) -> list[CatalogTool]:
        """What ``principal`` may see: verified (or warn-mode) tools the policy lets it call."""
        entries = [e for e in self.catalog.tools.values() if not e.info.blocked]
        if self.list_filter is None:
            return entries
        allowed = {t.name for t in await self.list_filter(principal, [e.info for e in entries])}
        return [e for e in entries if e.info.name in allowed]

    async def allowed_targets(self, principal: Principal, kind: str, pairs: list[tuple[str, str]]) -> set[str]:
        """Of (target, upstream) pairs for resources/read or prompts/get, those ``principal`` may use.

        Listings show a caller only what the policy would let it read or get (the same rule,
        with ``action = "list"``); with the policy off, everything.
        """
        engine = self.policy_engine
        if engine is None:
            return {t for t, _ in pairs}
        from gateway.policy.inputdoc import build_input

        allowed: set[str] = set()
        for target, upstream in pairs:
            inp = build_input(
                principal=principal, kind=kind, target=target, action="list", upstream=self.upstream_info(upstream),
                agent=self.agents.info(principal.agent),
            )
            if (await engine.adecide(inp)).allow:
                allowed.add(target)
        return allowed

    def upstream_info(self, name: str) -> UpstreamInfo:
        if name in self.builtins:
            return UpstreamInfo(name=name, transport="builtin")
        srv = self.config.servers[name]
        return UpstreamInfo(name=name, transport="stdio" if srv.command else "http", domain=srv.domain)

    # -- calls -----------------------------------------------------------------------------

    async def call(self, call: CallContext) -> Any:
        assert self._chain is not None, "Gateway.running() not entered"
        return await self._chain(call)

    async def _dispatch(self, call: CallContext) -> Any:
        """The innermost step: send the call to its upstream (or built-in provider)."""
        if call.kind == "resources/read":
            assert call.upstream is not None
            request: Any = types.ReadResourceRequest(
                params=types.ReadResourceRequestParams(
                    uri=call.target, input_responses=call.input_responses, request_state=call.request_state
                )
            )
            return await self.with_upstream(
                call.upstream.name, lambda up: up.session.send_request(request, _READ_RESULT), call.downstream
            )
        if call.kind == "prompts/get":
            assert call.upstream is not None
            entry = self.catalog.prompt(call.target)
            request = types.GetPromptRequest(
                params=types.GetPromptRequestParams(
                    name=entry.original_name,
                    arguments={k: str(v) for k, v in call.arguments.items()},
                    input_responses=call.input_responses,
                    request_state=call.request_state,
                )
            )
            return await self.with_upstream(
                call.upstream.name, lambda up: up.session.send_request(request, _PROMPT_RESULT), call.downstream
            )
        assert call.tool is not None
        builtin = self.builtins.get(call.tool.upstream)
        if builtin is not None:
            return await builtin.call(call)
        up = self.upstreams.get(call.tool.upstream)
        if up is None:
            raise UpstreamUnavailable(f"upstream {call.tool.upstream!r} is not configured")
        ctx = call.downstream
        session = getattr(ctx, "session", None)
        progress = None
        if ctx is not None and session is not None:

            async def progress(p: float, total: float | None, message: str | None) -> None:
                with contextlib.suppress(Exception):
                    await session.report_progress(p, total, message)

        token = DOWNSTREAM_CAPABILITIES.set(session)
        try:
            with up.relay.caller(session, getattr(ctx, "request_id", None)):
                return await up.call_tool(
                    call.tool.original_name,
                    call.arguments,
                    progress=progress,
                    input_responses=call.input_responses,
                    request_state=call.request_state,
                )
        finally:
            DOWNSTREAM_CAPABILITIES.reset(token)

    async def with_upstream(self, name: str, fn: Callable[[Upstream], Awaitable[Any]], ctx: Any = None) -> Any:
        up = self.upstreams.get(name)
        if up is None:
            raise UpstreamUnavailable(f"upstream {name!r} is not configured")
        session = getattr(ctx, "session", None)
        token = DOWNSTREAM_CAPABILITIES.set(session)
        try:
            with up.relay.caller(session, getattr(ctx, "request_id", None)):
                return await up.request(fn(up))
        finally:
            DOWNSTREAM_CAPABILITIES.reset(token)


_READ_RESULT: TypeAdapter[Any] = TypeAdapter(types.ReadResourceResult | types.InputRequiredResult)
_PROMPT_RESULT: TypeAdapter[Any] = TypeAdapter(types.GetPromptResult | types.InputRequiredResult)


def _tool_sig(c: Catalog) -> dict[str, Any]:
    return {
        n: (t.info.definition_hash or json.dumps(t.info.definition, sort_keys=True, default=str), t.info.verification)
        for n, t in c.tools.items()
    }
