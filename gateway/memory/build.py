"""Build the context manager the ``[context]`` config section describes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config.model import Config
from gateway.errors import ConfigError, ContextError
from gateway.events import EventSink
from gateway.memory.access import MemoryAccess
from gateway.memory.embed import Embedder, make_embedder
from gateway.memory.guard import GuardedStore, unplaced
from gateway.memory.manager import ContextManager, MemorySettings
from gateway.memory.store import CollectionSpec, VectorStore, open_store
from gateway.policy.engine import PolicyEngine
from gateway.runtime.agents import Agent, AgentRegistry
from gateway.runtime.lifecycle import AgentState
from gateway.state.health import safe_url

if TYPE_CHECKING:  # the built-ins import the MCP SDK (~1 s): `symbi knowledge`/`memory` need none
    from gateway.memory.builtin import MemoryService

COLLECTION = "symbi_memory"


def embedder_factory(config: Config) -> Callable[[], Embedder]:
    c = config.context

    def make() -> Embedder:
        return make_embedder(
            c.embedder,
            dimension=c.embedding_dimension,
            api_key=c.openai_api_key,
            base_url=c.openai_base_url,
            model=c.embedding_model,
        )

    return make


def build_manager(
    config: Config,
    events: EventSink,
    *,
    clock: Callable[[], float] = time.time,
    embedder: Callable[[], Embedder] | None = None,
) -> ContextManager:
    """A ``ContextManager`` whose store and embedder open on first use.

    Raises:
        ConfigError: ``[context] enabled = false``: no gateway serves this memory (the CLI's
            ``symbi knowledge`` / ``symbi memory`` would act on a store nothing reads).
    """
    c = config.context
    if not c.enabled:
        raise ConfigError(
            "context.enabled = false: the gateway serves no memory or knowledge; set it to true "
            "to use the store"
        )
    make_embedder_ = embedder or embedder_factory(config)
    holder: dict[str, Embedder] = {}

    def emb() -> Embedder:
        if "e" not in holder:
            holder["e"] = make_embedder_()
        return holder["e"]

    def store() -> VectorStore:
        e = emb()
        spec = CollectionSpec(COLLECTION, e.dimension, e.id)
        # the data dir's path is the operator's: logged, never in what an agent is told
        hide = tuple({str(config.gateway.data_dir), str(config.gateway.data_dir.resolve())})
        try:
            inner = open_store(
                spec, url=c.vector_db_url, data_dir=config.gateway.data_dir, backend=c.embedded_store
            )
        except ContextError as e:
            raise unplaced(e, hide) from e
        # its failures are VectorStoreUnavailable: a refusal with a reason, never a crash
        return GuardedStore(inner, safe_url(c.vector_db_url) if c.vector_db_url else "(embedded)", hide)

    def store_exists() -> bool:
        if c.vector_db_url:
            return True
        folder = "vectors" if c.embedded_store == "edge" else "vectors-local"
        return (config.gateway.data_dir / folder / COLLECTION).exists()

    settings = MemorySettings(
        cache_bytes=c.context_cache_size,
        short_term_ttl_s=c.short_term_ttl_s,
        retention_days=c.knowledge_retention_days,
        working_bytes_per_principal=c.working_memory_per_principal,
        short_term_bytes_per_principal=c.short_term_per_principal or max(1, c.context_cache_size // 4),
        memories_per_principal=c.max_memories_per_principal,
    )
    return ContextManager(store, emb, settings, events=events, clock=clock, store_exists=store_exists)


def build_service(config: Config, events: EventSink, policy: PolicyEngine | None) -> MemoryService:
    """What the ``memory`` and ``knowledge`` built-ins share (``gateway.assemble`` plugs it in)."""
    from gateway.memory.builtin import MemoryService

    return MemoryService(
        build_manager(config, events),
        MemoryAccess(policy, events),
        retention_interval_s=config.context.purge_interval_s,
    )


def end_with_agents(manager: ContextManager, agents: AgentRegistry) -> None:
    """Volatile memory goes when its agent ends (the session of an HTTP session's agent closed,
    an agent swept or terminated), not only at its time-to-live."""

    def on_state(agent: Agent, _src: AgentState, to: AgentState) -> None:
        if to is AgentState.TERMINATED:
            manager.end_agent(agent.id, final=agent.ephemeral)

    agents.on_state.append(on_state)
