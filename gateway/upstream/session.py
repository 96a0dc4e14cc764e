"""One upstream MCP server: a kept-open client session, restarted with backoff when it dies.

A single ``ClientSession`` per upstream is reused by every call (no process per call).
``Upstream.run`` is a supervisor loop: connect, list everything, mark up, wait until the
transport closes, mark down, back off exponentially, repeat. While it is down its tools
leave the catalogue and calls get ``UpstreamUnavailable``.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import anyio
from mcp import ClientSession, types
from mcp.client.subscriptions import listen as listen_changes
from mcp.shared.dispatcher import ProgressFnT
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from gateway.compat import negotiate_auto
from gateway.config.model import Config, ServerConfig
from gateway.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from gateway.events import Event, EventSink, record_acted
from gateway.handouts import HandedOut
from gateway.jsonlimits import too_large
from gateway.telemetry import current_span_recorded, exporting
from gateway.upstream.asked import RequestGate
from gateway.upstream.caller_caps import forward_caller_capabilities
from gateway.upstream.failures import describe, upstream_error
from gateway.upstream.fastcall import FastLane, tool_result
from gateway.upstream.listing import BoundedLists, Listing
from gateway.upstream.progress import paced_progress
from gateway.upstream.relay import CallerRelay
from gateway.upstream.runas import RunAs, resolve_run_as
from gateway.upstream.transport import CommandWrapper, WatchedStream, open_transport
from gateway.upstream.unreadable import Unreadable

_logger = logging.getLogger("symbi.upstream")

State = Literal["starting", "up", "down", "stopped"]


class Upstream:
    """A supervised connection to one upstream MCP server."""

    def __init__(
        self,
        name: str,
        server: ServerConfig,
        config: Config,
        *,
        events: EventSink,
        on_change: Callable[[Upstream], Awaitable[None]],
        on_resource_updated: Callable[[Upstream, str], Awaitable[None]] | None = None,
        wrap_command: CommandWrapper | None = None,
        start_gate: anyio.Semaphore | None = None,
        handed_out: HandedOut | None = None,
        server_name: str | None = None,
        gate: RequestGate | None = None,
    ) -> None:
        self.name = name
        self.server = server
        self._config = config
        self._events = events
        self._on_change = on_change
        self._on_resource_updated = on_resource_updated
        self._wrap_command = wrap_command
        # shared by the gateway's stdio upstreams: how many start at once (mcp.max_concurrent_starts)
        self._start_gate = start_gate if self.transport == "stdio" else None
        self.state: State = "starting"
        self.listing = Listing()
        # each list bounded by mcp.max_listed_per_upstream (refused whole beyond it)
        self._lists = BoundedLists(name, config.mcp.max_listed_per_upstream, events)
        # when the last list_changed from this server arrived (to measure notice-to-client time)
        self.changed_at: float | None = None
        self.restarts = 0
        self.last_error: str | None = None
        # the links in its sampling requests are claims under its server's name (a replica's
        # own is ``X-r2``), in the catalogue's hand-outs
        # (and each of its requests to the client passes the bounds and the policy: asked.py)
        self.relay = CallerRelay(name, events, handed_out=handed_out, claimant=server_name, gate=gate)
        self._session: ClientSession | None = None
        # the fast lane of tools/call on a stdio connection, with the session it belongs to
        self._lane: tuple[ClientSession, FastLane] | None = None
        self._new_lane: FastLane | None = None
        self._closed = anyio.Event()
        self._refresh_lock = anyio.Lock()
        # refresh_soon's coalescing: the refresh waiting to run (its session, the lists it takes)
        self._queued: tuple[ClientSession, set[str] | None] | None = None
        self._refresh_turn = anyio.Lock()
        self._up_event = anyio.Event()
        self._stop = False
        # an unsandboxed stdio server never runs with the gateway's privileges (runas.py)
        self._run_as: RunAs | None = None
        if server.command is not None and server.sandbox in (None, "none"):
            self._run_as = resolve_run_as(config)

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.server.command else "http"

    @property
    def call_timeout(self) -> float:
        return self.server.timeout_s or self._config.mcp.call_timeout_s

    @property
    def server_capabilities(self) -> types.ServerCapabilities | None:
        """What the connected server declared (None while it is not up)."""
        return self._session.server_capabilities if self.state == "up" and self._session is not None else None

    @property
    def session(self) -> ClientSession:
        if self.state != "up" or self._session is None:
            raise UpstreamUnavailable(
                f"upstream {self.name!r} is {self.state}"
                + (f" (last error: {self.last_error})" if self.last_error else ""),
            )
        return self._session

    async def wait_up(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._up_event.wait()
        return self.state == "up"

    # -- supervisor ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and keep connected until cancelled."""
        backoff = self._config.mcp.restart_backoff_initial_s
        while not self._stop:
            started = anyio.current_time()
            try:
                await self._connect_once()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as e:  # noqa: BLE001 - any failure of one upstream must not stop the others
                # a connection ended on purpose keeps its reason (not its teardown's error)
                ended = self.state == "up" and self._closed.is_set() and self.last_error is not None
                self.last_error = self.last_error if ended else describe(e)
                _logger.warning("upstream %s failed: %s", self.name, self.last_error)
            was_up = self.state == "up"
            self.state = "down"
            self._session = None
            self._lane = None
            self._up_event = anyio.Event()
            self.listing = Listing()
            # outside the try: a broken log's refusal here ended the supervisor, and the gateway
            record_acted(self._events, Event.UPSTREAM_DOWN, {"upstream": self.name, "error": self.last_error})
            if was_up:
                await self._notify_change()
            if self._stop:
                break
            if anyio.current_time() - started > 60:
                backoff = self._config.mcp.restart_backoff_initial_s  # it ran fine for a while
            delay = min(backoff, self._config.mcp.restart_backoff_max_s) * (0.8 + 0.4 * random.random())
            _logger.info("upstream %s: restarting in %.1fs", self.name, delay)
            await anyio.sleep(delay)
            backoff = min(backoff * 2, self._config.mcp.restart_backoff_max_s)
            self.restarts += 1
            self.state = "starting"

    @contextlib.asynccontextmanager
    async def _start_turn(self) -> AsyncIterator[None]:
        """Wait for a start slot (stdio): the connection timeout runs from here, not while waiting."""
        if self._start_gate is None:
            yield
            return
        async with self._start_gate:
            yield

    async def _connect_once(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            async with self._start_turn():
                session = await self._start(stack)
            if session.protocol_version in MODERN_PROTOCOL_VERSIONS:
                forward_caller_capabilities(session)
            if session.protocol_version in MODERN_PROTOCOL_VERSIONS and self._tasks is not None:
                # 2026-07-28 servers push nothing: list changes arrive on a listen stream.
                self._tasks.start_soon(self._listen_for_changes, session)
            self.state = "up"
            self.last_error = None
            # refused: the upstream is up all the same (not torn down and restarted in a loop)
            record_acted(
                self._events,
                Event.UPSTREAM_UP,
                {
                    "upstream": self.name,
                    "transport": self.transport,
                    "protocol_version": session.protocol_version,
                    "tools": len(self.listing.tools),
                    "restarts": self.restarts,
                },
            )
            await self._notify_change()  # the catalogue has this upstream's tools before anyone waits on it
            self._up_event.set()
            await self._closed.wait()
            self.last_error = self.last_error or "transport closed"

    async def _start(self, stack: contextlib.AsyncExitStack) -> ClientSession:
        """Spawn or connect, initialize and list, within the connection timeout; the
        transport and session stay open on ``stack``."""
        self._new_lane = None
        read, write = await stack.enter_async_context(
            open_transport(
                self.name,
                self.server,
                self._config,
                wrap_command=self._wrap_command,
                run_as=self._run_as,
                call_timeout=self.call_timeout,
                on_oversized=self._oversized,
                on_lane=self._got_lane,
                on_unreadable=self._unreadable,
                on_session_gone=self._session_gone,
            )
        )
        lane, self._new_lane = self._new_lane, None
        read = WatchedStream(read, self._mark_closed)
        self._closed = anyio.Event()
        session = await stack.enter_async_context(
            ClientSession(
                read,
                write,
                sampling_callback=self.relay.sampling,
                elicitation_callback=self.relay.elicitation,
                list_roots_callback=self.relay.list_roots,
                logging_callback=self.relay.log,
                message_handler=self._on_message,
                client_info=types.Implementation(name="symbi-gateway", version="0.1.0"),
            )
        )
        with anyio.fail_after(self._config.mcp.connection_timeout_s):
            if self.server.protocol == "auto":
                await negotiate_auto(session)
            else:
                await session.initialize()
            self._session = session
            if lane is not None and session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                self._lane = (session, lane)  # 2026 upstreams stamp every request: the SDK's path
            await self._refresh(session)
        return session

    def _got_lane(self, lane: FastLane) -> None:
        self._new_lane = lane

    def _fast_lane(self, session: ClientSession) -> FastLane | None:
        """The lane for a call on ``session``, unless its spans would be recorded (the SDK's
        path makes the CLIENT span an exporter or a sampled caller expects)."""
        bound = self._lane
        if bound is None or bound[0] is not session:
            return None
        if exporting() or current_span_recorded():
            return None
        return bound[1]

    def _mark_closed(self) -> None:
        self._closed.set()

    def _oversized(self, what: str) -> None:
        self.last_error = f"sent {what} (mcp.max_message_bytes): refused"
        record_acted(
            self._events, Event.UPSTREAM_MISBEHAVED, {"upstream": self.name, "reason": self.last_error}
        )

    def _session_gone(self) -> None:
        """The HTTP server answered 404 to our session: it ended it (restarted, dropped it idle).
        MCP says initialize a new one: the supervisor reconnects, after its backoff (so a server
        answering 404 to everything gets a paced re-initialize, never a loop)."""
        if not self._closed.is_set():
            self.last_error = "the server ended its session (404 to Mcp-Session-Id): initializing a new one"
            _logger.warning("upstream %s: %s", self.name, self.last_error)
        self._closed.set()

    def _unreadable(self, found: Unreadable) -> None:
        """A message refused for its text (answered or dropped by the transport): logged (the
        reason is valid UTF-8, so the line is written); a refused request of the upstream's is
        an audit event, as the relay's refusals are."""
        _logger.warning("upstream %s: %s", self.name, found.reason)
        if found.kind == "request":
            self.relay.refused(found.method or "request", found.reason)

    async def _check_alive(self, session: ClientSession) -> None:
        """After a timed-out request: a server that no longer answers a ping is wedged, and
        is restarted (its calls would time out one after the other otherwise)."""
        if self._session is not session or self._stop:
            return
        try:
            with anyio.fail_after(min(5.0, self._config.mcp.connection_timeout_s)):
                await session.send_ping()
        except Exception as e:  # noqa: BLE001 - any failure to answer is the verdict
            if self._session is session:
                self.last_error = f"wedged: no answer to a ping after a timed-out request ({describe(e)})"
                _logger.warning("upstream %s %s: restarting it", self.name, self.last_error)
                record_acted(  # refused: the wedged server is restarted all the same
                    self._events,
                    Event.UPSTREAM_MISBEHAVED,
                    {"upstream": self.name, "reason": self.last_error},
                )
                self._closed.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            _logger.debug("upstream %s transport error: %s", self.name, message)
            return
        kind = _CHANGE_KINDS.get(type(message))
        if kind is not None:
            # Refresh in the background: the receive loop must keep running while we list.
            session = self._session
            if session is not None:
                self.changed_at = anyio.current_time()
                await self.refresh_soon(session, {kind})
        elif isinstance(message, types.ResourceUpdatedNotification) and self._on_resource_updated:
            await self._on_resource_updated(self, message.params.uri)

    async def _listen_for_changes(self, session: ClientSession) -> None:
        caps = session.server_capabilities
        try:
            async with listen_changes(
                session,
                tools_list_changed=bool(caps and caps.tools is not None),
                prompts_list_changed=bool(caps and caps.prompts is not None),
                resources_list_changed=bool(caps and caps.resources is not None),
            ) as sub:
                async for event in sub:
                    if self._session is not session:
                        return
                    self.changed_at = anyio.current_time()
                    kind = _CHANGE_KINDS.get(type(event))
                    await self.refresh_soon(session, {kind} if kind else None)  # coalesced too
        except Exception as e:  # noqa: BLE001 - no listen support: changes are seen on reconnect only
            _logger.info("upstream %s: no change notifications (%s)", self.name, describe(e))

    async def refresh_soon(self, session: ClientSession, kinds: set[str] | None = None) -> None:
        """A refresh in the background, coalesced: one runs, one more at most waits with every
        list named meanwhile (a list_changed storm was a listing per notification)."""
        tg = self._tasks
        if tg is None:
            return
        if self._queued is not None:  # one waits already: it lists these too
            old = self._queued[1]
            self._queued = (session, None if old is None or kinds is None else old | kinds)
            return
        self._queued = (session, kinds)
        tg.start_soon(self._queued_refresh)

    async def _queued_refresh(self) -> None:
        async with self._refresh_turn:  # behind the one running: what arrives meanwhile joins us
            assert self._queued is not None
            (session, kinds), self._queued = self._queued, None
            await self._refresh_and_notify(session, kinds)

    _tasks: anyio.abc.TaskGroup | None = None

    def bind_task_group(self, tg: anyio.abc.TaskGroup) -> None:
        self._tasks = tg

    async def _refresh_and_notify(self, session: ClientSession, kinds: set[str] | None = None) -> None:
        try:
            await self._refresh(session, kinds)
        except Exception as e:  # noqa: BLE001
            _logger.warning("upstream %s: refresh after list_changed failed: %s", self.name, describe(e))
            return
        await self._notify_change()

    async def _refresh(self, session: ClientSession, kinds: set[str] | None = None) -> None:
        """List what the server offers (``BoundedLists.offered``), one refresh at a time."""
        async with self._refresh_lock:
            self.listing = await self._lists.offered(session, self.listing, kinds)

    async def _notify_change(self) -> None:
        try:
            await self._on_change(self)
        except Exception:
            _logger.exception("catalogue update after %s changed failed", self.name)

    async def restart(self) -> None:
        """Drop the connection; the supervisor reconnects (after its backoff)."""
        self.last_error = "restart requested"
        self._closed.set()

    async def stop(self) -> None:
        self.request_stop()

    def request_stop(self) -> None:
        """End the connection (and the process) for good: the supervisor does not reconnect."""
        self._stop = True
        self._closed.set()

    # -- calls -----------------------------------------------------------------------------

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        *,
        progress: ProgressFnT | None = None,
        input_responses: Any = None,
        request_state: str | None = None,
    ) -> types.CallToolResult | types.InputRequiredResult:
        session = self.session
        if progress is not None:  # what the upstream reports reaches the caller paced (progress.py)
            progress = paced_progress(progress)
        try:
            lane = self._fast_lane(session)
            if lane is not None and input_responses is None and request_state is None:
                params: dict[str, Any] = {"name": name}
                if arguments is not None:
                    params["arguments"] = arguments
                raw = await lane.request(
                    "tools/call", params, timeout=self.call_timeout, on_progress=progress
                )
                if raw is not None:
                    self._walkable(raw.get("structuredContent"), raw.get("_meta"))
                    return tool_result(raw, session.protocol_version)
            # send_request skips the client-side outputSchema check: the client validates
            # against what the gateway lists, and it saves a validation per call.
            result = await session.send_request(
                types.CallToolRequest(
                    params=types.CallToolRequestParams(
                        name=name,
                        arguments=arguments,
                        input_responses=input_responses,
                        request_state=request_state,
                    )
                ),
                _CALL_TOOL_RESULT,
                request_read_timeout_seconds=self.call_timeout,
                progress_callback=progress,
            )
            if isinstance(result, types.CallToolResult):
                self._walkable(result.structured_content, result.meta)
            return result
        except MCPError as e:
            err = upstream_error(self.name, e)
            if isinstance(err, UpstreamTimeout):
                self._probe_soon(session)
            raise err from None

    def _walkable(self, structured: Any, meta: Any) -> None:
        """Refuse a result the steps could not walk, or not in reasonable time
        (``gateway.jsonlimits``: too deep, a key too long)."""
        for name, part in (("structuredContent", structured), ("_meta", meta)):
            large = too_large(part) if isinstance(part, dict | list) else None
            if large is not None:
                raise UpstreamError(
                    f"upstream {self.name!r} answered tools/call with result.{name}{large.path}: "
                    f"{large.problem}"
                )

    def _probe_soon(self, session: ClientSession) -> None:
        if self._tasks is not None:
            self._tasks.start_soon(self._check_alive, session)

    async def request(self, coro: Awaitable[Any]) -> Any:
        """Await an upstream request, turning protocol failures into ``UpstreamError``."""
        try:
            with anyio.fail_after(self.call_timeout):
                return await coro
        except MCPError as e:
            raise upstream_error(self.name, e) from None
        except TimeoutError:
            if self._session is not None:
                self._probe_soon(self._session)
            raise UpstreamTimeout(f"upstream {self.name!r} timed out after {self.call_timeout:g}s") from None


# which list a change notice (handshake-era push or 2026 listen event) is about
_CHANGE_KINDS: dict[type, str] = {
    types.ToolListChangedNotification: "tools",
    types.PromptListChangedNotification: "prompts",
    types.ResourceListChangedNotification: "resources",
    ToolsListChanged: "tools",
    PromptsListChanged: "prompts",
    ResourcesListChanged: "resources",
}

_CALL_TOOL_RESULT: TypeAdapter[types.CallToolResult | types.InputRequiredResult] = TypeAdapter(
    types.CallToolResult | types.InputRequiredResult
)
