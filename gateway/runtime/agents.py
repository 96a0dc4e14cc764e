"""Agent records and the registry that holds them.

Every MCP session is an agent (``AgentRegistry.for_session``); hosted agents are registered
by the runtime that starts them. The registry is the one place that changes an agent's
state: ``transition`` checks the seed's lifecycle and writes exactly one ``agent.state``
audit event per change, the Ready <-> Running flips around each call included (the agent
runtime issue asks for one event per transition; they are also counted in
``task_transitions`` for ``symbi_agent_task_transitions``). Other components subscribe to ``on_register`` / ``on_unregister``
(the bus's key store, agent memory) instead of polling.

The registry lives on the gateway's event loop: its methods are synchronous and never block.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gateway.config.sections import AgentConfig
from gateway.context import AgentInfo, Principal
from gateway.errors import AgentLimitReached, AgentTerminated
from gateway.events import Event, EventSink
from gateway.runtime.ended import EndedSessions
from gateway.runtime.identity import agent_label, clean_label, make_agent_id
from gateway.runtime.lifecycle import AgentState, check_transition

_logger = logging.getLogger("symbi.runtime")

AgentHook = Callable[["Agent"], None]
HOSTED_SESSION = "hosted"  # never a session key of a client (those are stdio, http:, key:, jwt:, anonymous)
HTTP_SESSION = "http:"  # session keys of HTTP sessions (``http:<mcp-session-id>``): never the same twice
STDIO_SESSION = "stdio"  # the one client of a ``symbi mcp`` process: a new process is a new session


def hosted_principal(name: str, ac: AgentConfig) -> Principal:
    """The principal a hosted agent ``[agents.NAME]`` runs as (source "key": it calls back with
    the API key the runtime makes for it)."""
    return Principal(id=ac.principal or f"agent:{name}", kind="agent", roles=tuple(ac.roles), source="key")


ENDED_SESSIONS = 10_000


@dataclass(slots=True, eq=False)
class Agent:
    """One agent: a session of a principal's client, or a hosted agent's run."""

    id: str
    name: (
        str  # unique among live agents: "label/client" (sessions, ``agent_label``) or the [agents.NAME] name
    )
    principal: str
    principal_kind: str
    roles: tuple[str, ...]
    client: str  # the client's declared name (a label, never trusted for identity)
    session: str  # the session key this agent was made for
    owner: str = ""  # the qualified principal (``key:alice``, ``jwt:<issuer>#alice``): keys sessions
    hosted: bool = False
    priority: int = 0
    state: AgentState = AgentState.INITIALIZING
    reason: str = ""  # why it is in its state (the last transition's reason)
    created: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    calls: int = 0
    suspend_pending: str | None = None  # a suspension asked for while Ready: applied at its next task
    hosted_busy: bool = False  # a hosted agent's process is working (keeps it Running)
    # its id never comes back once it ended (an HTTP session's, or one remade after a
    # termination), so what is kept for it (bus keys, inbox) goes when it ends
    ephemeral: bool = False
    # the AgentInfo last made and the fields it was made from (see ``info``)
    _info: tuple[str, str, AgentState, int, bool, AgentInfo] | None = field(
        default=None, init=False, repr=False
    )

    def info(self) -> AgentInfo:
        """The agent as the policy sees it. The same AgentInfo object while every field it was
        made from is the same object (compared by identity: an edit, even to an equal value,
        makes a new one), so the documents kept with it (``gateway.policy.inputdoc``) follow
        each state change: a suspended agent's next call carries ``Suspended``."""
        held = self._info
        if (
            held is not None
            and held[2] is self.state
            and held[3] is self.priority
            and held[0] is self.id
            and held[1] is self.name
            and held[4] is self.hosted
        ):
            return held[5]
        info = AgentInfo(
            id=self.id, name=self.name, state=str(self.state), priority=self.priority, hosted=self.hosted
        )
        self._info = (self.id, self.name, self.state, self.priority, self.hosted, info)
        return info

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "principal": self.principal,
            "qualified_principal": self.owner,  # what a suspension holds (``gateway.runtime.holds``)
            "client": self.client,
            "hosted": self.hosted,
            "priority": self.priority,
            "state": self.state.value,
            "reason": self.reason,
            "suspend_pending": self.suspend_pending,
            "in_flight": self.in_flight,
            "calls": self.calls,
            "created": self.created,
            "idle_s": round(time.monotonic() - self.last_seen, 3),
        }


class AgentRegistry:
    """Every live agent, by id, by name and by (principal, client, session)."""

    def __init__(
        self,
        events: EventSink,
        *,
        key: bytes | None = None,
        max_agents: int | None = None,
        max_per_principal: int | None = None,
        reserved: int = 0,
        default_priority: int = 4,
        ended: EndedSessions | None = None,
    ) -> None:
        self.events = events
        self.max_agents = max_agents  # runtime.max_concurrent_agents (live, i.e. not Terminated)
        # runtime.max_agents_per_principal: one caller's session agents (a stateless client
        # makes one per client name it declares) never take the whole of max_agents
        self.max_per_principal = max_per_principal
        self.reserved = reserved  # slots of max_agents kept for hosted agents (one per configured)
        self._live_sessions = 0
        self._live_of: dict[str, int] = {}  # qualified principal -> its live session agents
        self.default_priority = default_priority  # runtime.default_priority: every session agent's
        self._live = 0
        self._cursor: Iterator[Agent] = iter(())
        self._bound: dict[str, Agent] = {}  # credential key id -> the hosted agent it was made for
        # sessions an operator terminated: they get no new agent (bounded, oldest forgotten)
        self._ended: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._ended_store = ended  # the data dir's copy of those that recur after a restart
        if ended is not None:
            self._ended.update(ended.load(ENDED_SESSIONS))
        # the id key: the gateway's data dir holds it (agent-id-key), so ids survive a restart
        self._key = key if key is not None else os.urandom(32)
        self._by_id: dict[str, Agent] = {}
        self._by_name: dict[str, Agent] = {}
        self._by_session: dict[tuple[str, str, str], Agent] = {}
        self._of_session: dict[str, dict[str, Agent]] = {}  # session key -> its agents, by id
        self.on_register: list[AgentHook] = []
        self.on_unregister: list[AgentHook] = []
        self.on_state: list[Callable[[Agent, AgentState, AgentState], None]] = []
        # per-call Ready <-> Running flips (also audited): edge label -> count
        self.task_transitions: dict[str, int] = {"task assigned": 0, "task complete": 0}

    # -- lookup ------------------------------------------------------------------------------

    def get(self, agent_id: str | None) -> Agent | None:
        return self._by_id.get(agent_id) if agent_id is not None else None

    def by_name(self, name: str) -> Agent | None:
        return self._by_name.get(name)

    def info(self, agent_id: str | None) -> AgentInfo | None:
        agent = self.get(agent_id)
        return agent.info() if agent is not None else None

    def __iter__(self) -> Iterator[Agent]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def of_session(self, session: str) -> list[Agent]:
        """The agents made for the gateway's session key ``session`` (``http:<id>``, ...)."""
        return list(self._of_session.get(session, {}).values())

    def resolve(self, ref: str) -> Agent | None:
        """An agent by id, by name, or by a unique id prefix (for the CLI)."""
        hit = self._by_id.get(ref) or self._by_name.get(ref)
        if hit is not None:
            return hit
        found = [a for a in self._by_id.values() if a.id.startswith(ref)] if len(ref) >= 6 else []
        return found[0] if len(found) == 1 else None

    # -- making agents ------------------------------------------------------------------------

    def for_session(self, principal: Principal, client_name: object, session: str) -> Agent:
        """The agent of this principal's client in this session, made on first use.

        Only the authenticated principal, the client's declared name (a label) and the
        gateway's session key go in; nothing a client sends can pick the id. A credential the
        runtime made for a hosted agent maps to that agent, whatever the session.
        """
        # only an API key principal's key_id names a credential (never a JWT's claim)
        kid = principal.claims.get("key_id") if principal.source == "key" else None
        if isinstance(kid, str) and kid in self._bound:
            hosted = self._bound[kid]
            hosted.last_seen = time.monotonic()
            return hosted
        client = clean_label(client_name)
        key = (principal.qualified, client, session)  # a JWT sub=alice is not the API key alice
        ended = self._ended.get(key)
        if ended is not None:
            raise AgentTerminated(f"the agent of this session was terminated: {ended}")
        agent = self._by_session.get(key)
        if agent is not None and agent.state is not AgentState.TERMINATED:
            agent.last_seen = time.monotonic()
            return agent
        self._admit(principal.id, principal.qualified)
        agent_id = make_agent_id(self._key, principal.qualified, client, session)
        if agent is not None:  # a terminated agent of the same session: a new one, new id
            agent_id = make_agent_id(self._key, principal.qualified, client, f"{session}\x00{agent.created}")
        agent = Agent(
            id=agent_id,
            # the label is the qualified principal's: another namespace's same id never takes it
            name=self._unique_name(f"{agent_label(principal.qualified)}/{client}"),
            principal=principal.id,
            principal_kind=principal.kind,
            roles=tuple(principal.roles),
            client=client,
            session=session,
            owner=principal.qualified,
            priority=self.default_priority,
            ephemeral=session.startswith(HTTP_SESSION) or agent is not None,
        )
        self._by_session[key] = agent
        self._of_session.setdefault(session, {})[agent.id] = agent
        self._add(agent)
        self.transition(agent, AgentState.READY, f"session of {principal.id} ({client})")
        return agent

    def hosted_id(self, name: str, principal: str) -> str:
        """The id of hosted agent ``name``: the same for every run and across restarts (with the
        same data dir), so messages sent to it while it is not running wait for its next run."""
        return make_agent_id(self._key, principal, f"hosted:{name}", HOSTED_SESSION)

    def add_hosted(self, name: str, principal: Principal, *, priority: int, run: int) -> Agent:
        """A hosted agent's run ``run``: a new record per run (Terminated is final), one id for all."""
        agent = Agent(
            id=self.hosted_id(name, principal.id),
            name=name,
            principal=principal.id,
            principal_kind=principal.kind,
            roles=tuple(principal.roles),
            client=f"hosted:{name}",
            session=f"hosted:{name}:{run}",
            owner=principal.qualified,
            hosted=True,
            priority=priority,
        )
        old = self._by_name.get(name)
        if old is not None and old.state is not AgentState.TERMINATED:
            raise ValueError(f"hosted agent {name!r} already has a live run ({old.id})")
        if old is not None:
            self.remove(old)
        self._admit(principal.id, None)
        self._add(agent)
        return agent

    def end_session(self, agent: Agent, reason: str) -> None:
        """Refuse the session of ``agent`` from now on (an operator terminated it)."""
        if agent.hosted:
            return
        key = (agent.owner, agent.client, agent.session)
        if self._ended_store is not None and not agent.session.startswith((HTTP_SESSION, STDIO_SESSION)):
            self._ended_store.add(key, reason, ENDED_SESSIONS)  # on disk before it is answered
        self._ended[key] = reason
        self._ended.move_to_end(key)
        while len(self._ended) > ENDED_SESSIONS:
            self._ended.popitem(last=False)

    def bind_credential(self, key_id: str, agent: Agent) -> None:
        """Calls made with API key ``key_id`` are ``agent``'s (a hosted agent's own credential)."""
        self._bound[key_id] = agent

    def unbind_credential(self, key_id: str) -> None:
        self._bound.pop(key_id, None)

    def bound(self, key_id: str) -> Agent | None:
        """The hosted agent credential ``key_id`` was made for, when its run is here."""
        return self._bound.get(key_id)

    def _admit(self, principal: str, owner: str | None) -> None:
        """Room for one more agent; ``owner`` is a session agent's qualified principal (None: a
        hosted agent's run, which may use the slots kept for hosted agents)."""
        wait = f"no new agent for {principal} until one ends (see runtime.agent_idle_timeout_s)"
        if self.max_agents is not None and (
            self._live >= self.max_agents
            or (owner is not None and self._live_sessions >= self.max_agents - self.reserved)
        ):
            raise AgentLimitReached(
                f"too many agents: runtime.max_concurrent_agents = {self.max_agents} are live"
                + (f" ({self.reserved} kept for hosted agents)" if self.reserved else ""),
                reasons=[wait],
            )
        if owner is not None and self.max_per_principal is not None:
            if self._live_of.get(owner, 0) >= self.max_per_principal:
                raise AgentLimitReached(
                    f"too many agents of {principal}: runtime.max_agents_per_principal = "
                    f"{self.max_per_principal} are live",
                    reasons=[wait],
                )

    def _count(self, agent: Agent, step: int) -> None:
        """Keep the live counts (all agents; session agents, per principal) as ``agent`` comes or goes."""
        self._live += step
        if agent.hosted:
            return
        self._live_sessions += step
        n = self._live_of.get(agent.owner, 0) + step
        if n > 0:
            self._live_of[agent.owner] = n
        else:
            self._live_of.pop(agent.owner, None)

    def live(self) -> int:
        return self._live

    def batch(self, n: int) -> list[Agent]:
        """The next ``n`` agents, round-robin over the registry (the sweep's bounded step)."""
        out: list[Agent] = []
        restarted = False
        while len(out) < n and self._by_id:
            try:
                out.append(next(self._cursor))
            except (StopIteration, RuntimeError):  # end reached, or the dict changed size
                if restarted:
                    break
                self._cursor = iter(list(self._by_id.values()))
                restarted = True
        return out

    def _unique_name(self, base: str) -> str:
        if base not in self._by_name:
            return base
        for n in itertools.count(2):
            name = f"{base}#{n}"
            if name not in self._by_name:
                return name
        raise AssertionError("unreachable")

    def _add(self, agent: Agent) -> None:
        self._count(agent, 1)
        self._by_id[agent.id] = agent
        self._by_name[agent.name] = agent
        self.events.emit(
            Event.AGENT_REGISTERED,
            {
                "agent": agent.id,
                "name": agent.name,
                "client": agent.client,
                "hosted": agent.hosted,
                "priority": agent.priority,
            },
            principal=agent.principal,
            agent=agent.id,
        )
        for hook in self.on_register:
            _safe(hook, agent)

    def remove(self, agent: Agent) -> None:
        """Forget a Terminated agent (the GC sweep); its hooks run once."""
        if agent.state is not AgentState.TERMINATED:
            raise ValueError(f"agent {agent.id} is {agent.state.value}: only Terminated agents are removed")
        if self._by_id.pop(agent.id, None) is None:
            return
        if self._by_name.get(agent.name) is agent:
            del self._by_name[agent.name]
        key = (agent.owner, agent.client, agent.session)
        if self._by_session.get(key) is agent:
            del self._by_session[key]
        held = self._of_session.get(agent.session)
        if held is not None:
            held.pop(agent.id, None)
            if not held:
                del self._of_session[agent.session]
        for hook in self.on_unregister:
            _safe(hook, agent)

    # -- state ----------------------------------------------------------------------------------

    def transition(self, agent: Agent, to: AgentState, reason: str) -> None:
        """Move ``agent`` along one lifecycle edge; one ``agent.state`` event. Refuses others."""
        src = agent.state
        edge = check_transition(agent.id, src, to)
        agent.state = to
        agent.reason = reason
        if to is AgentState.TERMINATED:
            self._count(agent, -1)
        if edge in self.task_transitions:
            self.task_transitions[edge] += 1
        try:
            self.events.emit(
                Event.AGENT_STATE,
                {
                    "agent": agent.id,
                    "name": agent.name,
                    "from": str(src),  # a StrEnum's str is its value (``.value`` costs two calls)
                    "to": str(to),
                    "edge": edge,
                    "reason": reason,
                },
                principal=agent.principal,
                agent=agent.id,
            )
        finally:  # the state changed: what follows it (a suspension's hold of its principal) too,
            # also when the record raised (the audit log broken, deny: its principal unheld; session 42)
            for hook in self.on_state:
                try:
                    hook(agent, src, to)
                except Exception:
                    _logger.exception("agent state hook failed")


def _safe(hook: AgentHook, agent: Agent) -> None:
    try:
        hook(agent)
    except Exception:
        _logger.exception("agent registry hook failed for %s", agent.id)
