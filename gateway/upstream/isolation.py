"""``servers.X.isolation``: an upstream process of its own for each principal (or session).

Over stdio a server→client request (sampling, elicitation, roots) carries no link to the
call that caused it, so on a shared process it can only be relayed when every call in
flight belongs to one principal (``relay.py``), and is refused otherwise. With isolation a
caller's calls go to a process that only that caller's calls reach: its relay has one owner
in flight, so every such request is answered by that caller's client, even while another
principal calls the same server at the same time.

The processes are replicas of the server (``Gateway.replicas``, as ``replicas = N``), started
on first use, at most ``isolation_max`` of them; one without a call in flight for
``isolation_idle_s`` is stopped, and when all are busy a new caller is refused.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from gateway.compat import connection_of
from gateway.config.model import ServerConfig
from gateway.context import CallContext
from gateway.errors import UpstreamUnavailable
from gateway.upstream.relay import caller_owner
from gateway.upstream.session import Upstream

if TYPE_CHECKING:
    from gateway.context import Downstream

_logger = logging.getLogger("symbi.isolation")


class IsolatedReplicas:
    """The per-owner processes of one server; ``replicas`` is the gateway's list of them."""

    def __init__(
        self,
        name: str,
        server: ServerConfig,
        replicas: list[Upstream],
        start: Callable[[str], Upstream],
        connect_timeout_s: float,
    ) -> None:
        self.name = name
        self._server = server
        self._replicas = replicas  # primary first: the catalogue's source, never given to an owner
        self._start = start
        self._connect_timeout_s = connect_timeout_s
        self._by_owner: dict[str, Upstream] = {}
        self._busy: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()
        self.closed = False  # its server was removed: the sweep ends

    @property
    def mode(self) -> str:
        return self._server.isolation

    def owner_of_call(self, call: CallContext) -> str:
        """Whose process a call goes to: its principal's, or (``session``) its session's."""
        return self._key(call.principal.qualified, call.session_id)

    def owner_of(self, ctx: Downstream | None) -> str:
        """The same for a request that is no call (completions, ``logging/setLevel``)."""
        request = getattr(ctx, "request", None)
        if ctx is None:
            session = None
        elif request is None:
            session = f"session-{id(connection_of(ctx.session))}"  # stdio: one connection
        else:
            session = str(request.headers.get("mcp-session-id") or "")
        return self._key(caller_owner(ctx), session)

    def _key(self, principal: str, session: str | None) -> str:
        return principal if self.mode == "principal" else f"{principal}\0{session or ''}"

    @asynccontextmanager
    async def use(self, owner: str) -> AsyncIterator[Upstream]:
        """The owner's process, started on its first call (refused when all are busy); it
        counts as busy from here on, so no other owner's start can stop it meanwhile."""
        async with self._lock:
            up = self._by_owner.get(owner)
            if up is None:
                self._reap(anyio.current_time())
                if len(self._by_owner) >= self._server.isolation_max:
                    self._evict_least_recent()
                up = self._start(f"{self.name}-i{next(self._ids)}")
                self._replicas.append(up)
                self._by_owner[owner] = up
            self._busy[owner] = self._busy.get(owner, 0) + 1
        try:
            await up.wait_up(self._connect_timeout_s)
            yield up
        finally:
            self._busy[owner] -= 1
            self._last_used[owner] = anyio.current_time()

    def _evict_least_recent(self) -> None:
        idle = [o for o in self._by_owner if self._idle(o)]
        if not idle:
            raise UpstreamUnavailable(
                f"upstream {self.name!r}: all {self._server.isolation_max} isolated processes "
                f"(servers.{self.name}.isolation_max) are busy with other callers"
            )
        self._drop(min(idle, key=lambda o: self._last_used.get(o, 0.0)))

    def _idle(self, owner: str) -> bool:
        # a call bridged to a 2026 client runs on after its first answer: its relay still counts it
        return self._busy.get(owner, 0) == 0 and self._by_owner[owner].relay.in_flight == 0

    def _reap(self, now: float) -> None:
        for owner in [o for o in self._by_owner if self._idle(o)]:
            if now - self._last_used.get(owner, now) >= self._server.isolation_idle_s:
                self._drop(owner)

    def _drop(self, owner: str) -> None:
        up = self._by_owner.pop(owner)
        self._busy.pop(owner, None)
        self._last_used.pop(owner, None)
        if up in self._replicas:
            self._replicas.remove(up)
        _logger.info(
            "upstream %s: stopping isolated process %s (idle, or its slot is needed)", self.name, up.name
        )
        up.request_stop()

    async def sweep(self) -> None:
        """Stop idle processes in the background (also checked on every new owner)."""
        period = max(1.0, min(self._server.isolation_idle_s / 2, 30.0))
        while not self.closed:
            await anyio.sleep(period)
            async with self._lock:
                self._reap(anyio.current_time())
