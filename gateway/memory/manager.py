"""The seed's ``ContextManager``: store, retrieve and search an agent's memory and knowledge.

Who may do what is decided before a call gets here (the memory built-in asks the policy with
the ``context/read``, ``context/write`` and ``knowledge/search`` input kinds); this layer keeps
every agent's items apart by construction: every query carries the agent (or the shared
namespaces the policy granted) as a payload filter, so no query can reach another agent's items.

The vector store and the embedder open lazily, on first use: a gateway that never uses memory
pays nothing, and a second gateway process on the same data dir (the embedded store has one
owner) fails only its memory calls, with a reason.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import ContextError, MemoryQuotaExceeded
from gateway.events import Event, EventSink, LoggingSink
from gateway.memory.embed import Embedder
from gateway.memory.store import SERVED, Filter, Point, Range, VectorStore
from gateway.memory.types import (
    MEMORY_TYPES,
    NAME_RE,
    PERSISTENT_TYPES,
    AgentContext,
    ContextItem,
    ContextQuery,
    KnowledgeItem,
    metadata_bytes,
)
from gateway.memory.volatile import VolatileMemory

DAY_S = 86_400.0
MAX_TEXT_CHARS = 32_000
# a memory's metadata as JSON: tags to filter on, not a second text (unbounded, it carried a
# principal past every memory quota: those count it, see ``metadata_bytes``)
MAX_METADATA_BYTES = 4096
# a query (recall, knowledge search): the local model reads its first 256 tokens, and the
# cost of one grew with its length without bound (a 3.5 MB query: 6.7 s of the model's
# tokenizer; 20,000 keywords against a 4,000-chunk base: 76 s of BM25 on a shared thread)
MAX_QUERY_CHARS = 8000
FILTER_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_NAME = re.compile(NAME_RE)


@dataclass(frozen=True)
class MemorySettings:
    """The ``[context]`` keys the manager reads (see ``gateway.memory.build``)."""

    cache_bytes: int = 64 * 1024 * 1024
    short_term_ttl_s: float = 3600.0
    retention_days: int = 365  # 0: keep forever
    # per principal (``Principal.qualified``): its agents' working memory in bytes, and the
    # long-term and shared memories it keeps in the store (each at most MAX_TEXT_CHARS)
    working_bytes_per_principal: int = 16 * 1024 * 1024
    short_term_bytes_per_principal: int = 16 * 1024 * 1024  # past it, its own oldest go first
    memories_per_principal: int = 10_000


def namespace_of(agent: str, memory_type: str, namespace: str | None) -> str:
    if memory_type == "shared":
        return f"shared:{namespace}"
    return f"agent:{agent}"


def check_query(text: str) -> str:
    """A query's text, refused when empty or longer than ``MAX_QUERY_CHARS``."""
    if not text.strip():
        raise ContextError("query: empty")
    if len(text) > MAX_QUERY_CHARS:
        raise ContextError(f"query: {len(text)} characters, more than {MAX_QUERY_CHARS}")
    return text


def check_bounds(text: str, metadata: Mapping[str, Any]) -> None:
    """A memory's text and metadata within their bounds (``MAX_TEXT_CHARS``, ``MAX_METADATA_BYTES``,
    keys a filter can name), checked before anything reads them: redaction and screening cost
    with their size (3 MB of metadata held the event loop for most of a second, then was refused).

    Raises:
        ContextError: naming what is too large or not allowed.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise ContextError(f"text: {len(text)} characters, more than {MAX_TEXT_CHARS}")
    user_filter(metadata)  # metadata keys follow the filter key rules, so they can be filtered on
    if (size := metadata_bytes(metadata)) > MAX_METADATA_BYTES:
        raise ContextError(f"metadata: {size} bytes as JSON, more than {MAX_METADATA_BYTES}")


def check_name(value: str | None, what: str) -> str:
    if not value or not _NAME.match(value):
        raise ContextError(
            f"{what} {value!r} is not a valid name (letters, digits, '_', '.', '-'; at most 64)"
        )
    return value


def user_filter(filters: Mapping[str, Any] | None, prefix: str = "meta.") -> dict[str, Any]:
    """Caller filters on metadata, checked: a key cannot name a system field (agent, namespace...)."""
    out: dict[str, Any] = {}
    for k, v in (filters or {}).items():
        if not isinstance(k, str) or not FILTER_KEY.match(k):
            raise ContextError(f"filters.{k}: a filter key is letters, digits and '_' only")
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                raise ContextError(f"filters.{k}: a list filter holds strings only")
        elif not isinstance(v, str | int | bool):
            raise ContextError(f"filters.{k}: expected a string, number, boolean or list of strings")
        out[prefix + k] = v
    return out


class ContextManager:
    """Short-term, working, long-term and shared memory, and knowledge search, for agents."""

    def __init__(
        self,
        store: Callable[[], VectorStore],
        embedder: Callable[[], Embedder],
        settings: MemorySettings | None = None,
        *,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.time,
        store_exists: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings or MemorySettings()
        self._store_exists = store_exists  # is there a store to open (without opening it)?
        self.clock = clock
        self.events: EventSink = events or LoggingSink()
        self._store_factory = store
        self._embedder_factory = embedder
        self._store: VectorStore | None = None
        self._embedder: Embedder | None = None
        self._open_lock = threading.Lock()
        self.short_term = VolatileMemory(
            "short_term",
            max_bytes=self.settings.cache_bytes,
            ttl_s=self.settings.short_term_ttl_s,
            clock=clock,
            owner_max_bytes=self.settings.short_term_bytes_per_principal,
            owner_limit_key="context.short_term_per_principal",
            owner_full="evict",
        )
        self.working = VolatileMemory(
            "working",
            clock=clock,
            owner_max_bytes=self.settings.working_bytes_per_principal,
            owner_limit_key="context.working_memory_per_principal",
        )
        self._quota_lock = threading.Lock()  # one principal's count and write, not two at once

    # -- lazily opened parts --------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        with self._open_lock:
            if self._store is None:
                self._store = self._store_factory()
            return self._store

    @property
    def embedder(self) -> Embedder:
        with self._open_lock:
            if self._embedder is None:
                self._embedder = self._embedder_factory()
            return self._embedder

    def store_in_use(self) -> bool:
        """The store is open, or exists to be opened: the retention job has something to purge
        (it must not open a store, load the model and take the embedded store's lock in a
        gateway whose agents never used memory)."""
        with self._open_lock:
            return self._store is not None or self._store_exists()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(texts)

    def close(self) -> None:
        with self._open_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # -- the seed's three operations ------------------------------------------------------

    def store_context(self, agent: str, context: AgentContext, principal: str = "") -> str:
        """Store one memory for ``agent`` of ``principal`` (``Principal.qualified``, whose
        quota it counts against); returns its id. Text must already be redacted by the caller.

        Raises:
            MemoryQuotaExceeded: the principal holds all the working memory or all the
                long-term and shared memories it may (nothing it holds is dropped).
            ContextError: bad input, or the store cannot be used.
        """
        if not agent:
            raise ContextError("storing memory needs an agent")
        text = context.text.strip()
        if not text:
            raise ContextError("text: empty memory")
        if context.memory_type not in MEMORY_TYPES:
            raise ContextError(f"type {context.memory_type!r}: expected one of {', '.join(MEMORY_TYPES)}")
        meta = dict(context.metadata)
        check_bounds(text, meta)
        if context.memory_type in ("long_term", "shared"):
            self._within_quota(principal)  # before the model runs: a try at the quota costs no embedding
        vec = self.embed([text])[0]
        item_id = str(uuid.uuid4())
        if context.memory_type == "short_term":
            self.short_term.add(item_id, agent, context.session or "-", text, vec, meta, principal)
        elif context.memory_type == "working":
            self.working.add(item_id, agent, check_name(context.task, "task"), text, vec, meta, principal)
        else:
            ns = None
            if context.memory_type == "shared":
                ns = check_name(context.namespace, "namespace")
            payload = {
                "kind": "memory",
                "memory_type": context.memory_type,
                "agent": agent,
                "principal": principal,
                "namespace": namespace_of(agent, context.memory_type, ns),
                "text": text,
                "ts": self.clock(),
                "meta": meta,
            }
            with self._quota_lock:  # again, with the write: two stores at once hold one slot
                self._within_quota(principal)
                self.store.upsert([Point(item_id, vec.tolist(), payload)])
        return item_id

    def _within_quota(self, principal: str) -> None:
        """Refuse a principal's next stored memory once it holds ``memories_per_principal``
        (counted in the store: replicas on one Qdrant server count the same items). Only those
        within the retention count: one past it is read by no one (``_live``), and a principal
        whose memories had all expired was refused every store until the purge job ran."""
        limit = self.settings.memories_per_principal
        held = self.store.count({"kind": "memory", "principal": principal, **self._live()})
        if held >= limit:
            raise MemoryQuotaExceeded(
                f"context.max_memories_per_principal: principal {principal!r} keeps {held} long-term and "
                f"shared memories, its limit is {limit}: nothing more is stored until some expire "
                "(context.knowledge_retention_days) or are purged (symbi memory purge)",
                reasons=[f"memory quota of {principal} reached ({limit} memories)"],
            )

    def retrieve_context(self, agent: str, query: ContextQuery) -> list[ContextItem]:
        """The agent's memories closest to ``query.text`` over the asked memory types."""
        vec = self.embed([check_query(query.text)])[0]
        meta_filter = user_filter(query.filters)
        plain = {k[len("meta.") :]: v for k, v in meta_filter.items()}
        k = max(1, min(query.top_k, 100))
        items: list[ContextItem] = []
        if "short_term" in query.memory_types:
            items += self.short_term.search(
                agent, query.session, vec, limit=k, min_score=query.min_score, filters=plain
            )
        if "working" in query.memory_types:
            items += self.working.search(
                agent, query.task, vec, limit=k, min_score=query.min_score, filters=plain
            )
        namespaces: list[str] = []
        if "long_term" in query.memory_types:
            namespaces.append(namespace_of(agent, "long_term", None))
        if "shared" in query.memory_types:
            namespaces += [
                namespace_of(agent, "shared", check_name(n, "namespace")) for n in query.namespaces
            ]
        if namespaces:
            flt: dict[str, Any] = {"kind": "memory", "namespace": namespaces, **meta_filter, **self._live()}
            for h in self.store.search(vec.tolist(), limit=k, filter=flt, score_threshold=query.min_score):
                p = h.payload
                ns = str(p.get("namespace", ""))
                items.append(
                    ContextItem(
                        h.id,
                        str(p.get("text", "")),
                        p.get("memory_type", "long_term"),
                        h.score,
                        str(p.get("agent", "")),
                        float(p.get("ts", 0.0)),
                        ns[len("shared:") :] if ns.startswith("shared:") else None,
                        dict(p.get("meta") or {}),
                    )
                )
        items.sort(key=lambda i: -i.score)
        return items[:k]

    def _live(self) -> dict[str, Range]:
        """The filter condition of memories within the retention: one past it is gone for every
        reader at once, not at the retention job's next round (an hour later by default, never
        while the job fails)."""
        if self.settings.retention_days <= 0:
            return {}
        return {"ts": Range(gte=self.clock() - self.settings.retention_days * DAY_S)}

    def search_knowledge(
        self,
        agent: str,
        text: str,
        *,
        bases: Sequence[str],
        top_k: int = 5,
        filters: Mapping[str, Any] | None = None,
    ) -> list[KnowledgeItem]:
        """Vector search over knowledge bases (the RAG pipeline adds keyword search and ranking)."""
        vec = self.embed([check_query(text)])[0]
        return self.knowledge_vector_search(vec, bases=bases, limit=top_k, filters=filters)

    def knowledge_vector_search(
        self, vec: np.ndarray, *, bases: Sequence[str], limit: int, filters: Mapping[str, Any] | None = None
    ) -> list[KnowledgeItem]:
        flt: dict[str, Any] = {"kind": "knowledge", "base": [check_name(b, "base") for b in bases]}
        flt.update(knowledge_filter(filters))
        flt.update(SERVED)  # a held file waits for the operator, unseen by agents
        return [
            knowledge_item(h.id, h.payload, h.score)
            for h in self.store.search(vec.tolist(), limit=limit, filter=flt)
        ]

    # -- lifecycle ------------------------------------------------------------------------

    def end_task(self, agent: str, task: str) -> int:
        """The task is over: its working memory goes."""
        return self.working.clear(agent, check_name(task, "task"))

    def end_session(self, agent: str, session: str) -> int:
        return self.short_term.clear(agent, session)

    def end_agent(self, agent: str, *, final: bool) -> int:
        """The agent ended: its short-term memory (its sessions') goes; with ``final`` (an id that
        never comes back, an HTTP session's agent) its working memory too, as no one can end
        its tasks any more."""
        n = self.short_term.clear(agent)
        return n + (self.working.clear(agent) if final else 0)

    def purge(self, *, older_than_s: float | None = None, agent: str | None = None) -> int:
        """Delete long-term and shared memories older than ``older_than_s`` (default: the retention)."""
        if older_than_s is None:
            if self.settings.retention_days <= 0:
                return 0
            older_than_s = self.settings.retention_days * DAY_S
        flt: dict[str, Any] = {"kind": "memory", "ts": Range(lte=self.clock() - older_than_s)}
        if agent:
            flt["agent"] = agent
        n = self.store.count(flt)
        if n:
            self.store.delete(filter=flt)
        self.events.emit(Event.MEMORY_PURGED, {"count": n, "older_than_s": older_than_s, "agent": agent})
        return n

    def stats(self, agent: str | None = None) -> dict[str, Any]:
        base: Filter = {"agent": agent} if agent else {}
        out: dict[str, Any] = {"backend": self.store.backend, "embedder": self.embedder.id}
        for t in PERSISTENT_TYPES:
            out[t] = self.store.count({**base, "kind": "memory", "memory_type": t})
        out["knowledge_chunks"] = self.store.count({"kind": "knowledge"})
        out["short_term"] = len(list(self.short_term.items(agent)))
        out["working"] = len(list(self.working.items(agent)))
        out["short_term_cache"] = self.short_term.stats()
        return out

    def list_items(
        self, agent: str, memory_type: str, *, limit: int = 100, namespace: str | None = None
    ) -> list[ContextItem]:
        """The newest items of one memory type (the ``memory://{agent}/{type}`` resource)."""
        if memory_type == "short_term":
            items = list(self.short_term.items(agent))
        elif memory_type == "working":
            items = list(self.working.items(agent))
        elif memory_type in PERSISTENT_TYPES:
            ns = namespace_of(agent, memory_type, namespace)
            # memory://A/shared/NS is what A wrote into NS (the namespace holds every writer's)
            flt: dict[str, Any] = {"kind": "memory", "namespace": ns, "agent": agent, **self._live()}
            # the newest ``limit`` only: the whole of an agent's memories (10,000 of up to
            # 36 KB each, 360 MB) was read into the gateway to show 100 of them
            pts = self.store.scroll(flt, limit=limit, newest_by="ts")
            items = [
                ContextItem(
                    p.id,
                    str(p.payload.get("text", "")),
                    memory_type,
                    1.0,
                    str(p.payload.get("agent", "")),
                    float(p.payload.get("ts", 0.0)),
                    namespace,
                    dict(p.payload.get("meta") or {}),
                )
                for p in pts
            ]
        else:
            raise ContextError(f"type {memory_type!r}: expected one of {', '.join(MEMORY_TYPES)}")
        items.sort(key=lambda i: -i.ts)
        return items[:limit]


def knowledge_filter(filters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Knowledge filters: ``source`` (exact path) or front-matter style metadata keys."""
    out = user_filter(filters)
    if "meta.source" in out:
        out["source"] = out.pop("meta.source")
    return out


def knowledge_item(item_id: str, p: Mapping[str, Any], score: float) -> KnowledgeItem:
    return KnowledgeItem(
        item_id,
        str(p.get("text", "")),
        str(p.get("base", "")),
        str(p.get("source", "")),
        int(p.get("chunk", 0)),
        score,
        str(p.get("heading", "")),
        float(p.get("ts", 0.0)),
        {"vector": score},
    )
