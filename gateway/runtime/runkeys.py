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
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
from redis.exceptions import RedisError

from gateway.config.model import Config
from gateway.context import Principal
from gateway.errors import AuthFailed, StateUnavailable
from gateway.runtime.agents import hosted_principal

if TYPE_CHECKING:
    from gateway.runtime.hosted import HostedAgents


class RunCredentials:
    """Decides, on the HTTP front, whether a hosted agent's credential is good here and now."""

    def __init__(self, config: Config) -> None:
        self.timeout_s = config.state.timeout_s
        self._names: dict[str, list[str]] = {}  # a hosted agent's principal -> its agents
        for name, ac in config.agents.items():
            self._names.setdefault(hosted_principal(name, ac).id, []).append(name)

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
        names = self._names[p.id]
        try:
            with anyio.fail_after(self.timeout_s):
                seen = await leased.board.statuses(names)
        except (RedisError, OSError, TimeoutError) as e:
            raise StateUnavailable(f"the hosted agents' leases cannot be read ({type(e).__name__})") from None
        if any(
            doc is not None and doc.get("key") == kid and doc.get("state") == "Running"
            for doc in seen.values()
        ):
            return
        raise AuthFailed("a hosted agent's credential is refused: its agent is not running")
