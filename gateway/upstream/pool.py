"""The processes of every configured server: primaries, replicas, isolated callers' own.

``Gateway`` owns one ``UpstreamPool``: it starts a server's processes (``servers.X.replicas``,
``servers.X.isolation``), routes a call to the least busy replica or to the caller's own
process, and lists them all for the start-up wait and the stop. The catalogue is built from
the primaries (``upstreams``) only: a replica's listing is its primary's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from gateway.config.model import Config, ServerConfig
from gateway.context import CallContext, Principal
from gateway.errors import UpstreamUnavailable
from gateway.events import EventSink
from gateway.handouts import HandedOut
from gateway.upstream.asked import RequestGate
from gateway.upstream.eras import on_behalf_of
from gateway.upstream.isolation import IsolatedReplicas
from gateway.upstream.session import Upstream
from gateway.upstream.transport import CommandWrapper

if TYPE_CHECKING:
    from gateway.context import Downstream

OnChange = Callable[[Upstream], Awaitable[None]]
ResourceUpdated = Callable[[Upstream, str], Awaitable[None]]


class UpstreamPool:
    """Every process of every server, and which one serves a call."""

    def __init__(
        self,
        config: Config,
        *,
        events: EventSink,
        on_change: OnChange,
        on_resource_updated: ResourceUpdated,
        handed_out: HandedOut,
        wrap_command: CommandWrapper | None,
        gate: RequestGate | None = None,
    ) -> None:
        self.config = config  # replaced by Gateway.add_server: new processes see the new server
        self.upstreams: dict[str, Upstream] = {}  # the primary of each server (the catalogue's source)
        self.replicas: dict[str, list[Upstream]] = {}  # every process of each server, primary first
        self._busy: dict[str, int] = {}  # calls in flight per replica (least-busy routing)
        self._isolated: dict[str, IsolatedReplicas] = {}  # servers.X.isolation: a process per caller
        self._events = events
        self._on_change = on_change
        self._on_resource_updated = on_resource_updated
        self._handed_out = handed_out
        self._wrap_command = wrap_command
        self._gate = gate  # what an upstream's requests to the client pass (asked.py)
        # stdio upstreams start a few at a time (mcp.max_concurrent_starts), restarts included
        self._start_gate = anyio.Semaphore(config.mcp.starts_at_once)
        self._tg: anyio.abc.TaskGroup | None = None  # set while running: servers added later start in it

    def bind_task_group(self, tg: anyio.abc.TaskGroup | None) -> None:
        self._tg = tg

    def _new(self, name: str, srv: ServerConfig, on_change: OnChange, server: str) -> Upstream:
        """A process of server ``server`` (``name`` is its own: ``server``, ``server-r2``...)."""
        assert self._tg is not None
        up = Upstream(
            name,
            srv,
            self.config,
            events=self._events,
            on_change=on_change,
            on_resource_updated=self._on_resource_updated,
            wrap_command=self._wrap_command,
            start_gate=self._start_gate,
            handed_out=self._handed_out,  # its sampling requests' links are claims too
            server_name=server,
            gate=self._gate,
        )
        up.bind_task_group(self._tg)
        return up

    def start(self, name: str, srv: ServerConfig) -> None:
        """Start server ``name``'s primary, its replicas and its isolation sweep."""
        assert self._tg is not None
        up = self._new(name, srv, self._on_change, name)
        self.upstreams[name] = up
        self.replicas[name] = [up]
        self._tg.start_soon(up.run, name=f"upstream-{name}")
        for i in range(2, srv.replicas + 1):  # the seed's load balancing: N processes of one server
            self.replicas[name].append(self._start_replica(f"{name}-r{i}", srv, name))
        if srv.isolation != "shared":
            pool = IsolatedReplicas(
                name,
                srv,
                self.replicas[name],
                lambda n: self._start_replica(n, srv, name),
                self.config.mcp.connection_timeout_s,
            )
            self._isolated[name] = pool
            self._tg.start_soon(pool.sweep, name=f"upstream-{name}-isolation")

    def stop(self, name: str) -> None:
        """Undo ``start``: server ``name`` out of the pool (no call reaches it from here on),
        its isolation sweep ended, every process of it told to stop."""
        processes = self.replicas.pop(name, [])
        self.upstreams.pop(name, None)
        isolated = self._isolated.pop(name, None)
        if isolated is not None:
            isolated.closed = True
        for up in processes:
            self._busy.pop(up.name, None)
            up.request_stop()

    def _start_replica(self, name: str, srv: ServerConfig, server: str) -> Upstream:
        assert self._tg is not None
        rep = self._new(name, srv, _ignore_change, server)
        self._tg.start_soon(rep.run, name=f"upstream-{name}")
        return rep

    def every_process(self) -> list[Upstream]:
        return [up for reps in self.replicas.values() for up in reps]

    def least_busy(self, name: str) -> Upstream:
        """The replica of ``name`` (``servers.X.replicas``) with the fewest calls in flight."""
        reps = self.replicas.get(name)
        if not reps:
            raise UpstreamUnavailable(f"upstream {name!r} is not configured")
        if len(reps) == 1:  # no replicas (the usual case): the one there is, up or not
            return reps[0]
        live = [u for u in reps if u.state == "up"] or reps[:1]
        return min(live, key=lambda u: self._busy.get(u.name, 0))

    def isolated(self, name: str) -> IsolatedReplicas | None:
        return self._isolated.get(name)

    def owner_of(self, name: str, owner_of_call: Callable[[IsolatedReplicas], str]) -> str | None:
        """Under ``servers.X.isolation``, whose process serves the call; None when shared."""
        isolated = self._isolated.get(name)
        return owner_of_call(isolated) if isolated is not None else None

    def busy(self, up: Upstream, delta: int) -> None:
        self._busy[up.name] = self._busy.get(up.name, 0) + delta

    async def with_upstream(
        self,
        name: str,
        fn: Callable[[Upstream], Awaitable[Any]],
        ctx: Downstream | None = None,
        owner: str | None = None,
        call: CallContext | None = None,
        principal: Principal | None = None,
    ) -> Any:
        """``fn(upstream)`` on behalf of the caller whose request context is ``ctx`` (under
        ``servers.X.isolation``, on that caller's own process: ``owner`` or from ``ctx``);
        ``call``: the request it serves, or ``principal``: the caller of a request that is no
        call (whom the upstream's own requests are decided for)."""
        up = self.upstreams.get(name)
        if up is None:
            raise UpstreamUnavailable(f"upstream {name!r} is not configured")
        isolated = self._isolated.get(name)
        if isolated is None:
            with on_behalf_of(up, ctx, call=call, principal=principal):
                return await up.request(fn(up))
        if owner is None:
            owner = isolated.owner_of(ctx)
        async with isolated.use(owner) as own:
            with on_behalf_of(own, ctx, call=call, principal=principal):
                return await own.request(fn(own))


async def _ignore_change(up: Upstream) -> None:
    """A replica's listing is its primary's: only the primary rebuilds the catalogue."""
