"""The gateway: upstream sessions, the catalogue, and the call chain, in one object.

``Gateway`` is entered once per process (stdio) or once per HTTP session manager, so every
downstream client shares the same upstream sessions. The fronts (``gateway.server``) turn
MCP requests into ``CallContext`` objects and hand them to ``Gateway.call``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from mcp import types
from mcp.server.session import ServerSession
from pydantic import TypeAdapter

from gateway.announce import Announcer
from gateway.boundary import without_gateway_meta
from gateway.catalog import Catalog, CatalogTool, LiveCatalog, UpstreamListing
from gateway.chain import CallNext, Step, build_chain
from gateway.compat import connection_of
from gateway.config.model import Config, ServerConfig
from gateway.context import CallContext, Principal, UpstreamInfo
from gateway.errors import CatalogError, ConfigError
from gateway.events import Event, EventSink, record_acted
from gateway.heap import settle_heap
from gateway.listen import ListenHub, StreamOutbound
from gateway.policy.inputdoc import CallCounters
from gateway.policy.results import progress_message
from gateway.runtime.agents import AgentRegistry
from gateway.runtime.core import AgentRuntime
from gateway.state import SharedState
from gateway.upstream.asked import RequestGate
from gateway.upstream.bridge import PendingQuestions
from gateway.upstream.builtin import (
    Builtin,
    PromptBuiltin,
    ResourceBuiltin,
    WatchedResourceBuiltin,
    listing_of,
)
from gateway.upstream.eras import answered_for_legacy, bridged_for_modern_client, modern, on_behalf_of
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.session import Upstream
from gateway.upstream.transport import CommandWrapper
from gateway.verify.listed import is_listed, listed_infos
from gateway.visibility import Visibility

if TYPE_CHECKING:
    from gateway.audit.log import AuditLog
    from gateway.context import Downstream
    from gateway.policy.engine import PolicyEngine
    from gateway.runtime.hosted import HostedAgents
    from gateway.verify.verifier import ToolVerifier

_logger = logging.getLogger("symbi.gateway")


# (server name, its config) -> (command, args, cleanup): runs a stdio upstream in a sandbox tier.
WrapCommand = CommandWrapper
# Long-running helpers started with the gateway (approval polling, ...).
Background = Callable[["Gateway"], Coroutine[Any, Any, None]]


class Gateway:
    """Upstream sessions, the live catalogue and the call chain, from typed components.

    Build one with ``gateway.assemble.make_gateway`` (the one assembly point): it decides
    the components and the order of ``steps``. Nothing is attached after construction.

    ``audit`` and ``policy`` are None only when the config turns them off (unsafe options).
    """

    def __init__(
        self,
        config: Config,
        steps: Sequence[Step],
        *,
        audit: AuditLog | None,
        policy: PolicyEngine | None,
        verifier: ToolVerifier,
        catalog: LiveCatalog,
        events: EventSink,
        counters: CallCounters | None = None,
        builtins: Sequence[Builtin] = (),
        wrap_command: WrapCommand | None = None,
        listen: ListenHub | None = None,
        background: Sequence[Background] = (),
        closers: Sequence[Callable[[], object]] = (),
        runtime: AgentRuntime | None = None,
        state: SharedState | None = None,
        hosted: HostedAgents | None = None,
    ) -> None:
        self.config = config
        self.steps: tuple[Step, ...] = tuple(steps)
        self.audit = audit
        self.policy = policy
        self.verifier = verifier
        self.live = catalog
        self.events = events
        self.counters = counters or CallCounters()
        self.state = state  # [state] backends shared with other replicas (None: a gateway built by hand)
        self.builtins: dict[str, Builtin] = {b.name: b for b in builtins}
        # Every session is an agent with a gateway-made id (gateway.runtime).
        # the runtime (gateway.runtime) schedules, budgets and supervises them
        # (not `runtime or ...`: the one assembled must be used even when falsy)
        self.runtime = runtime if runtime is not None else AgentRuntime(config, self.events)
        self.agents: AgentRegistry = self.runtime.agents
        self.hosted = hosted  # the [agents.*] processes, when configured
        # 2026-era clients' subscriptions/listen streams (not `listen or ...`: see ListenHub.__bool__)
        self.listen = listen if listen is not None else ListenHub()
        self._background = tuple(background)
        self._closers = tuple(closers)  # run in this order when the gateway stops
        self._chain: CallNext = build_chain(self.steps, self._dispatch)
        self.visibility = Visibility(policy, self.agents, self.live.upstream_info)
        self._announcer = Announcer(
            self.listen,
            self.events,
            self.live,
            visible=self.visibility.among,
            allowed_targets=self.visibility.targets,
        )
        # what an upstream's own requests to the client pass: bounds, then the policy (asked.py)
        self.asking = _request_gate(config, policy)
        self.pool = self._upstream_pool(wrap_command)
        self.upstreams = self.pool.upstreams  # the primary of each server (the catalogue's source)
        self.replicas = self.pool.replicas  # every process of each server, primary first
        self._rebuild_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None  # set while running
        self._ended = False  # ran and stopped: its components are closed
        # 2025-era upstream calls waiting for a 2026-era client's answers (the era bridge)
        self.pending = PendingQuestions(answer_timeout_s=config.mcp.call_timeout_s)

    def _upstream_pool(self, wrap_command: WrapCommand | None) -> UpstreamPool:
        """The processes of every server, telling this gateway when a listing or a resource changes."""
        return UpstreamPool(
            self.config,
            events=self.events,
            on_change=self._upstream_changed,
            on_resource_updated=self._announcer.resource_updated,
            handed_out=self.live.handed_out,
            wrap_command=wrap_command,
            gate=self.asking,
        )

    @property
    def catalog(self) -> Catalog:
        """The current catalogue snapshot (replaced whole on every rebuild)."""
        return self.live.snapshot

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        self.events.emit(
            Event.GATEWAY_START,
            {
                "servers": sorted(self.config.servers),
                "config": str(self.config.source) if self.config.source else None,
            },
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self.pool.bind_task_group(tg)
                for name, srv in self.config.servers.items():
                    if srv.enabled:
                        self.pool.start(name, srv)
                for task in self._background:
                    tg.start_soon(task, self)
                await self._rebuild()
                # Wait (bounded) for the first connection of every upstream, concurrently.
                with anyio.move_on_after(self.config.mcp.connection_timeout_s):
                    async with anyio.create_task_group() as waiters:
                        for up in self.pool.every_process():
                            waiters.start_soon(up.wait_up, self.config.mcp.connection_timeout_s)
                down = [n for n, u in self.upstreams.items() if u.state != "up"]
                if down:
                    _logger.warning(
                        "upstream(s) not up at start: %s (retrying in the background)", ", ".join(down)
                    )
                settle_heap()
                try:
                    yield self
                finally:
                    # a broken log's AuditError here skipped every upstream's stop below
                    record_acted(self.events, Event.GATEWAY_STOP, {})
                    for up in self.pool.every_process():
                        await up.stop()
                    tg.cancel_scope.cancel()
        finally:
            self._tg, self._ended = None, True  # nothing more started in it (an approval's refresh)
            if self.state is not None:  # the Redis client: after every background task's end
                try:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await self.state.aclose()
                except Exception:
                    _logger.exception("closing the shared state's Redis client failed")
            # also on cancellation or Ctrl-C/SIGTERM: sandboxes, cgroups, audit batches, pins
            for close in self._closers:
                try:
                    close()
                except Exception:
                    _logger.exception("closing a component failed")

    # -- catalogue -------------------------------------------------------------------------

    async def add_server(self, name: str, srv: ServerConfig) -> None:
        """Start an upstream that was not in the config at start (a discovered server a
        person approved). It passes every step as a configured one."""
        if name in self.upstreams or name in self.builtins:
            raise ConfigError(f"servers.{name}: exists already")
        self.config = self.config.model_copy(update={"servers": {**self.config.servers, name: srv}})
        self.verifier.reconfigure(self.config)
        self.pool.config = self.config
        self.live.add_upstream(
            UpstreamInfo(name=name, transport="stdio" if srv.command else "http", domain=srv.domain)
        )
        self.pool.start(name, srv)
        await self.upstreams[name].wait_up(self.config.mcp.connection_timeout_s)
        await self._rebuild()

    async def remove_server(self, name: str) -> None:
        """Stop a server ``add_server`` started (a discovered one Claude Code's managed policy
        now blocks): its processes are told to stop, and its tools, resources and prompts
        leave the catalogue before this returns; calls to it are refused from then on."""
        if name not in self.upstreams or name in self.builtins:
            raise ConfigError(f"servers.{name}: not running")
        try:
            self.pool.stop(name)
        finally:  # out of the catalogue whatever a stop raised: the next pass sees it gone
            servers = {n: s for n, s in self.config.servers.items() if n != name}
            self.config = self.config.model_copy(update={"servers": servers})
            self.verifier.reconfigure(self.config)
            self.pool.config = self.config
            self.live.remove_upstream(name)
            await self._rebuild()

    async def _upstream_changed(self, up: Upstream) -> None:
        since, up.changed_at = up.changed_at, None
        await self._rebuild(since, changed=up.name)

    async def _rebuild(self, since: float | None = None, changed: str | None = None) -> None:
        """A new catalogue snapshot; ``changed`` names the one upstream whose listing changed
        (the others keep their verification verdicts), None re-assesses every tool."""
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
            listings += [listing_of(b) for b in self.builtins.values()]
            # the catalogue uses verification: every tool's verdict is part of the snapshot
            current = self.catalog
            previous = {**{n: t.info for n, t in current.tools.items()}, **current.listed}
            fresh = Catalog.fresh_infos(listings, current) + listed_infos(listings)
            infos = await self.verifier.assess(fresh, changed=changed, previous=previous)
            # prompts, resources and templates are pinned as tools are (gateway.verify.listed)
            listed = {n: i for n, i in infos.items() if is_listed(n)}
            new = Catalog.build(listings, infos=infos, previous=current, listed=listed)
            self.verifier.screen_listings(new)  # resources and prompts: audited, as tools are
            old, self.live.snapshot = self.live.snapshot, new
            for r in new.refusals:
                if r not in old.refusals:  # on the record once, when it appears
                    record_acted(  # (refused already: a broken log must not end the rebuild's task)
                        self.events,
                        Event.CATALOG_REFUSED,
                        {"upstream": r.upstream, "kind": r.kind, "name": r.name, "reason": r.reason},
                    )
        await self._announcer.announce(old, new, since)

    async def watch_for_stream(
        self, principal: Principal, uris: list[str], outbound: StreamOutbound, on: bool
    ) -> None:
        """A listen stream asked about ``uris``: built-ins that push updates (``bus://inbox``)
        are told to push to it; upstreams' updates arrive through ``Announcer.resource_updated``."""
        for uri in uris:
            try:
                owner = self.catalog.subscription_owner(uri)
            except CatalogError:
                continue
            provider = self.builtins.get(owner)
            if isinstance(provider, WatchedResourceBuiltin):
                await provider.watch(uri, principal, outbound, on)

    async def refresh(self) -> None:
        """Rebuild the catalogue (after an approval or revocation, say)."""
        await self._rebuild()

    async def refresh_within(self, wait_s: float) -> bool:
        """``refresh`` waited for ``wait_s`` at most: True once the new catalogue is in force.
        False: it goes on in this gateway's task group (ended with it), or it failed (logged);
        the next rebuild takes the change. An operator's approval, done and recorded, must not
        wait on a slow rebuild (another holding the lock, a key discovery's timeout)."""
        if self._ended:  # stopped (an approval recorded as it stopped): nothing is served
            return False
        if self._tg is None:  # never run (tests, the CLI): nothing else rebuilds
            await self._rebuild()
            return True
        done, ok = anyio.Event(), False

        async def rebuild() -> None:
            nonlocal ok
            try:
                await self._rebuild()
                ok = True
            except Exception:  # a background task's failure must not end the gateway's group
                _logger.exception("the catalogue refresh failed")
            finally:
                done.set()

        self._tg.start_soon(rebuild)
        with anyio.move_on_after(wait_s):
            await done.wait()
        return ok

    @property
    def downstream_connections(self) -> int:
        """Handshake-era client connections remembered for pushed list_changed (``GET /api/state``)."""
        return self._announcer.connections

    def remember_downstream(self, session: ServerSession, who: Callable[[], Principal]) -> None:
        """Keep a handshake-era connection (and who opened it) for pushed notifications."""
        self._announcer.remember(connection_of(session), who)

    async def visible_tools(self, principal: Principal, catalog: Catalog | None = None) -> list[CatalogTool]:
        """Of ``catalog`` (default: the current one), the unblocked tools the policy lets ``principal`` see."""
        tools = (catalog if catalog is not None else self.catalog).tools.values()
        return await self.visibility.among(principal, [e for e in tools if not e.info.blocked])

    async def visible_among(self, principal: Principal, entries: list[CatalogTool]) -> list[CatalogTool]:
        """Of ``entries``, those the policy lets ``principal`` see (a page of a listing)."""
        return await self.visibility.among(principal, entries)

    async def allowed_targets(
        self, principal: Principal, kind: str, pairs: list[tuple[str, str]]
    ) -> set[str]:
        """Of (target, upstream) pairs, those ``principal`` may read or get (``Visibility.targets``)."""
        return await self.visibility.targets(principal, kind, pairs)

    def upstream_info(self, name: str) -> UpstreamInfo:
        return self.live.upstream_info(name)

    # -- calls -----------------------------------------------------------------------------

    async def call(self, call: CallContext) -> Any:
        """One request through the chain (``steps``, outermost first) to its upstream."""
        return await self._chain(call)

    async def _dispatch(self, call: CallContext) -> Any:
        """The innermost step: send the call to its upstream (or built-in provider). An
        upstream's result loses the ``_meta`` keys only the gateway sets (``symbi/...``), and the
        URIs it hands out are its claims (gateway.handouts): another upstream's template cannot
        take a read of them. Here, once, for every kind: no relayed result goes unnoted."""
        assert call.upstream is not None  # resolved: a tool's upstream too (gateway.steps.resolve)
        upstream = call.upstream.name
        served = self.builtins.get(upstream)
        if call.kind == "resources/read":
            if isinstance(served, ResourceBuiltin):
                return await served.read_resource(call)
            result = await self._read(upstream, call)
        elif call.kind == "prompts/get":
            if isinstance(served, PromptBuiltin):
                return await served.get_prompt(call)
            result = await self._get(upstream, call)
        elif served is not None:
            return await served.call(call)
        else:
            result = await self._dispatch_tool(upstream, call)
        if noted := self.live.handed_out.note_result(upstream, result, call.target):
            await self.live.handed_out.share(upstream, noted)  # a replica's too (StateUnavailable)
        return without_gateway_meta(result)

    async def _read(self, name: str, call: CallContext) -> Any:
        uri = call.target

        async def read(answers: Any, state: str | None) -> Any:
            request = types.ReadResourceRequest(
                params=types.ReadResourceRequestParams(uri=uri, input_responses=answers, request_state=state)
            )
            return await self.pool.with_upstream(
                name,
                lambda up: up.session.send_request(request, _READ_RESULT),
                call.downstream,
                self._owner_of_call(name, call),
                call=call,
            )

        return await answered_for_legacy(call, name, read, self.events, self.live.handed_out, self.asking)

    async def _get(self, owner: str, call: CallContext) -> Any:
        entry = self.catalog.prompt(call.target)

        async def get(answers: Any, state: str | None) -> Any:
            request = types.GetPromptRequest(
                params=types.GetPromptRequestParams(
                    name=entry.original_name,
                    arguments={k: str(v) for k, v in call.arguments.items()},
                    input_responses=answers,
                    request_state=state,
                )
            )
            return await self.pool.with_upstream(
                owner,
                lambda up: up.session.send_request(request, _PROMPT_RESULT),
                call.downstream,
                self._owner_of_call(owner, call),
                call=call,
            )

        return await answered_for_legacy(call, owner, get, self.events, self.live.handed_out, self.asking)

    async def _dispatch_tool(self, upstream: str, call: CallContext) -> Any:
        """A ``tools/call`` to its upstream (replica, or the caller's own process under
        ``servers.X.isolation``)."""
        isolated = self.pool.isolated(upstream)
        if isolated is None:
            return await self._call_tool(self.pool.least_busy(upstream), call)
        async with isolated.use(isolated.owner_of_call(call)) as own:
            return await self._call_tool(own, call)

    async def _call_tool(self, up: Upstream, call: CallContext) -> Any:
        assert call.tool is not None
        ctx = call.downstream
        progress = None
        if ctx is not None:
            session = ctx.session

            async def report(progress: float, total: float | None, message: str | None) -> None:
                if message is not None and call.decision is not None:
                    # the upstream's words reach the client: under the call's result conditions
                    message = progress_message(message, call.decision.conditions)
                with contextlib.suppress(Exception):
                    await session.report_progress(progress, total, message)

            progress = report

        self.pool.busy(up, 1)
        try:
            if modern(ctx) and not modern(up.session) and self._tg is not None:
                return await bridged_for_modern_client(
                    call, up, ctx, progress, pending=self.pending, tg=self._tg, events=self.events
                )
            tool = call.tool

            async def call_once(answers: Any, state: str | None) -> Any:
                return await up.call_tool(
                    tool.original_name,
                    call.arguments,
                    progress=progress,
                    input_responses=answers,
                    request_state=state,
                )

            with on_behalf_of(up, ctx, call=call):  # its log lines go under the call's conditions
                return await answered_for_legacy(
                    call, up.name, call_once, self.events, self.live.handed_out, self.asking
                )
        finally:
            self.pool.busy(up, -1)

    async def watch_resource(
        self, owner: str, uri: str, principal: Principal, ctx: Downstream | None, on: bool
    ) -> bool:
        """resources/(un)subscribe on a built-in's resource; False when ``owner`` is an upstream."""
        provider = self.builtins.get(owner)
        if not isinstance(provider, WatchedResourceBuiltin):
            return False
        # the connection outlives the per-request session object (as in remember_downstream)
        conn = connection_of(ctx.session) if ctx is not None else None
        await provider.watch(uri, principal, conn, on)
        return True

    def _owner_of_call(self, name: str, call: CallContext) -> str | None:
        return self.pool.owner_of(name, lambda isolated: isolated.owner_of_call(call))


_READ_RESULT: TypeAdapter[Any] = TypeAdapter(types.ReadResourceResult | types.InputRequiredResult)
_PROMPT_RESULT: TypeAdapter[Any] = TypeAdapter(types.GetPromptResult | types.InputRequiredResult)


def _request_gate(config: Config, policy: PolicyEngine | None) -> RequestGate:
    """The bounds and the policy an upstream's own requests to the client pass: a request is
    never larger than the largest message read at all (``mcp.max_message_bytes``)."""
    return RequestGate(
        policy,
        in_flight=config.mcp.max_server_requests_in_flight,
        max_bytes=min(config.mcp.max_server_request_bytes, config.mcp.max_message_bytes),
        decision=config.policy.decision,
    )
