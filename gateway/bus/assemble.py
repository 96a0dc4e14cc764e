"""The bus as the config describes it: backend, keys, policy hook, and the ``bus`` built-in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.bus.backend import BusBackend
from gateway.bus.builtin import BusBuiltin
from gateway.bus.core import Authorizer, Bus
from gateway.bus.crypto import KeyRing, config_secret
from gateway.config.model import Config
from gateway.context import Decision, Principal, UpstreamInfo
from gateway.events import EventSink
from gateway.policy.engine import PolicyEngine
from gateway.policy.inputdoc import build_input
from gateway.runtime.agents import Agent, AgentRegistry, hosted_principal
from gateway.runtime.lifecycle import AgentState

BUS_UPSTREAM = UpstreamInfo(name="bus", transport="builtin")


def make_backend(config: Config) -> BusBackend:
    if config.bus.backend == "redis":
        from gateway.bus.redis_backend import RedisBackend

        assert config.bus.url is not None  # the config model requires it
        return RedisBackend(config.bus.url)
    from gateway.bus.embedded import EmbeddedBackend

    return EmbeddedBackend(config.bus_path)


def policy_authorizer(engine: PolicyEngine, agents: AgentRegistry | None = None) -> Authorizer:
    """Decisions for the bus kinds: ``input.recipient`` = {agent, principal} (the recipient's
    qualified principal: ``key:alice``, ``jwt:<issuer>#<sub>``), ``input.topic``."""

    async def authorize(
        kind: str, principal: Principal, recipient: dict[str, Any] | None, topic: str | None
    ) -> Decision:
        extra: dict[str, Any] = {"recipient": recipient, "topic": topic}
        agent = agents.info(principal.agent) if agents is not None else None
        inp = build_input(
            principal=principal, kind=kind, target=kind, upstream=BUS_UPSTREAM, extra=extra, agent=agent
        )
        return await engine.adecide(inp)

    return authorize


def make_bus(
    config: Config, events: EventSink, engine: PolicyEngine | None, agents: AgentRegistry | None = None
) -> Bus:
    ring = KeyRing(config_secret(config), config.bus_keys_path)
    bus = Bus(
        make_backend(config),
        ring,
        events=events,
        buffer_size=config.runtime.message_buffer_size,
        max_age_s=config.bus.max_age_s,
        skew_s=config.bus.clock_skew_s,
        max_body_bytes=config.bus.max_body_bytes,
        max_subscriptions=config.bus.max_subscriptions_per_agent,
        subscription_ttl_s=config.bus.subscription_ttl_s,
        max_bytes_per_principal=config.bus.max_bytes_per_principal,
        authorize=policy_authorizer(engine, agents) if engine is not None else None,
        resolve=_resolver(agents, config) if agents is not None else None,
    )
    if agents is not None:
        for name, ac in config.agents.items():  # configured agents can be written to before they run
            p = hosted_principal(name, ac)
            bus.preregister(agents.hosted_id(name, p.id), p.qualified, name)

        # keys are made when the runtime registers an agent (agents never see them) and go
        # when an agent whose id never comes back ends, or bus.max_age_s after one whose id
        # recurs ended (unless it came back)
        def on_register(agent: Agent) -> None:
            bus.register_soon(agent.id, agent.owner, agent.name, persist=not agent.ephemeral)

        def on_state(agent: Agent, _src: AgentState, to: AgentState) -> None:
            if to is AgentState.TERMINATED:
                bus.end_soon(agent.id) if agent.ephemeral else bus.park(agent.id)

        agents.on_register.append(on_register)
        agents.on_state.append(on_state)
    return bus


def _resolver(agents: AgentRegistry, config: Config) -> Callable[[str], str | None]:
    """A recipient given as an agent id, a live agent's name (``principal/client``) or a
    configured agent's name (``[agents.NAME]``, running or not) -> its id. Names of another
    gateway process's agents (shared Redis) are looked up in the key directory, where each
    entry's HMAC binds the name to the id."""
    configured = {
        name: agents.hosted_id(name, hosted_principal(name, ac).id) for name, ac in config.agents.items()
    }

    def resolve(ref: str) -> str | None:
        agent = agents.get(ref) or agents.by_name(ref)
        return agent.id if agent is not None else configured.get(ref)

    return resolve


def make_bus_builtin(
    config: Config, events: EventSink, engine: PolicyEngine | None, agents: AgentRegistry | None = None
) -> BusBuiltin:
    return BusBuiltin(
        make_bus(config, events, engine, agents), expire_interval_s=config.bus.expire_interval_s
    )
