"""A hosted agent's run credential, presented to a replica that does not run the agent.

The runtime makes each run of a hosted agent an API key (``kind = "agent"``, the agent's
principal) and binds it to the run's record in the process running it: there the agent's
suspension and termination decide what the key may do. With the keys in PostgreSQL
(``[state] postgres_url``) every replica accepts the key; elsewhere it was a session agent of
``agent:NAME`` like any other, untouched by the hosted agent's state -- a leaked token kept
working while its agent was suspended, and for good if the process running it died before
revoking it.

So, with shared keys, an agent-kind key of a hosted agent's principal that is not bound here
is admitted only while the lease board names it as the credential of a run in state
``Running`` (the holder writes its run's key id and state with each renewal, and at once on a
state change, ``gateway.runtime.leased``). Redis unreachable: refused (``StateUnavailable``).
Without leases (no ``[state] redis_url``) each replica runs its own copy with its own key,
bound where it runs: an unbound one is refused.

The lease board's statuses are read at most once per ``CACHE_S`` per hosted agent principal,
whatever the number of requests (they were read from Redis on every request: a flood of
requests with the key was a flood of Redis reads); requests arriving during a read wait for it.
A request is decided on a read sent after it arrived or less than ``CACHE_S`` before, so a run
that stops being ``Running`` (its holder writes that at once) has its key refused by every other
replica within ``CACHE_S`` (plus that write); requests that waited for a slow read all take it.
A failed read is remembered as long (a 503 each).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from redis.exceptions import RedisError

from gateway.config.model import Config
from gateway.context import Principal
from gateway.errors import AuthFailed, StateUnavailable
from gateway.runtime.agents import hosted_principal

if TYPE_CHECKING:
    from gateway.runtime.hosted import HostedAgents
    from gateway.state.leases import LeaseBoard

CACHE_S = 1.0  # the longest a lease board read is used for (the revocation bound beyond the holder's write)
Statuses = dict[str, dict[str, Any] | None]


class RunCredentials:
    """Decides, on the HTTP front, whether a hosted agent's credential is good here and now."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = config.state.timeout_s
        self._clock = clock
        self._names: dict[str, list[str]] = {}  # a hosted agent's principal -> its agents
        for name, ac in config.agents.items():
            self._names.setdefault(hosted_principal(name, ac).id, []).append(name)
        # per principal: (monotonic time its read was sent, what it read or why it failed)
        self._seen: dict[str, tuple[float, Statuses | str]] = {}
        self._reading: dict[str, anyio.Event] = {}  # the read in flight per principal

    def applies(self, p: Principal) -> bool:
        """True for an API key of kind ``agent`` whose principal is a hosted agent's."""
        return p.source == "key" and p.kind == "agent" and p.id in self._names

    async def admit(self, p: Principal, hosted: HostedAgents | None) -> None:
        """Nothing when ``p``'s key is its run's here, or of a run Running where its lease is;
        else ``AuthFailed`` (``StateUnavailable`` when the lease board cannot be read)."""
        kid = p.claims.get("key_id")
        if hosted is None or not isinstance(kid, str):
            raise AuthFailed("a hosted agent's credential is refused: the gateway has not started")
        if hosted.runtime.agents.bound(kid) is not None:
            return  # its run is here: the record's state decides what it may do
        leased = hosted.leased
        if leased is None:
            raise AuthFailed("a hosted agent's credential is good only where its agent runs")
        seen = await self._statuses(p.id, leased.board)
        if any(
            doc is not None and doc.get("key") == kid and doc.get("state") == "Running"
            for doc in seen.values()
        ):
            return
        raise AuthFailed("a hosted agent's credential is refused: its agent is not running")

    async def _statuses(self, principal: str, board: LeaseBoard) -> Statuses:
        """The lease board's statuses of ``principal``'s agents, read at most once per
        ``CACHE_S``; ``StateUnavailable`` when that read failed."""
        arrived = self._clock()
        while True:
            hit = self._seen.get(principal)
            if hit is not None and (hit[0] >= arrived or self._clock() - hit[0] < CACHE_S):
                return _outcome(hit[1])
            reading = self._reading.get(principal)
            if reading is None:
                break
            await reading.wait()  # its result is sent after this request came (or it was cancelled)
        self._reading[principal] = done = anyio.Event()
        sent = self._clock()
        try:
            with anyio.fail_after(self.timeout_s):
                seen: Statuses | str = await board.statuses(self._names[principal])
        except (RedisError, OSError, TimeoutError) as e:
            seen = f"the hosted agents' leases cannot be read ({type(e).__name__})"
        finally:
            del self._reading[principal]
            done.set()
        self._seen[principal] = (sent, seen)
        return _outcome(seen)


def _outcome(seen: Statuses | str) -> Statuses:
    """A read's statuses, or a new ``StateUnavailable`` for a failed one (a fresh exception
    each time: one re-raised object collects every raise's traceback)."""
    if isinstance(seen, str):
        raise StateUnavailable(seen)
    return seen
