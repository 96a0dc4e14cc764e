"""The seed's context types: what is stored, what is asked, what comes back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

MemoryType = Literal["short_term", "working", "long_term", "shared"]
MEMORY_TYPES: tuple[MemoryType, ...] = get_args(MemoryType)
# kept in the vector store; the other two live in the gateway process
PERSISTENT_TYPES: tuple[MemoryType, ...] = ("long_term", "shared")

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # namespace, knowledge base and task names


@dataclass(frozen=True)
class AgentContext:
    """One memory to store (the seed's ``AgentContext``)."""

    text: str
    memory_type: MemoryType = "long_term"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    namespace: str | None = None  # shared memory only
    session: str | None = None  # short-term memory is per session
    task: str | None = None  # working memory is per task


@dataclass(frozen=True)
class ContextQuery:
    """The seed's ``ContextQuery``: text, memory types, filters, top_k, min_score."""

    text: str
    memory_types: tuple[MemoryType, ...] = MEMORY_TYPES
    filters: Mapping[str, str | list[str]] = field(default_factory=dict)
    top_k: int = 5
    min_score: float = 0.0
    namespaces: tuple[str, ...] = ()  # shared namespaces to search (policy-checked by the caller)
    session: str | None = None
    task: str | None = None


@dataclass(frozen=True)
class ContextItem:
    id: str
    text: str
    memory_type: MemoryType
    score: float
    agent: str
    ts: float
    namespace: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "type": self.memory_type,
            "score": round(self.score, 4),
            "agent": self.agent,
            "ts": self.ts,
            "namespace": self.namespace,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class KnowledgeItem:
    """A chunk of a knowledge base, with what a citation needs."""

    id: str
    text: str
    base: str
    source: str
    chunk: int
    score: float
    heading: str = ""
    ts: float = 0.0
    scores: Mapping[str, float] = field(default_factory=dict)  # per signal: vector, bm25, fused

    def citation(self) -> str:
        where = f" §{self.heading}" if self.heading else ""
        return f"{self.base}:{self.source}#{self.chunk}{where}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "base": self.base,
            "source": self.source,
            "chunk": self.chunk,
            "heading": self.heading,
            "score": round(self.score, 4),
            "citation": self.citation(),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


def metadata_bytes(meta: Mapping[str, Any]) -> int:
    """The bytes a memory's metadata counts for against the quotas (its UTF-8 JSON; none: 0)."""
    if not meta:
        return 0
    return len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode())
