"""Memories kept in the gateway process: short-term (per session) and working (per task).

Short-term memory is bounded by ``[context] context_cache_size`` (bytes of text + vector + metadata over
all sessions; the oldest item goes first), a principal's own by ``short_term_per_principal``
(its oldest go first: one principal storing without end evicts only its own), and expires
after ``short_term_ttl_s``. Working
memory lives until its task ends (``end_task``), at most ``working_memory_per_principal`` bytes
of it per principal: past that a new item is refused (``MemoryQuotaExceeded``), none is dropped.
Neither survives a restart, by design: long-term and shared memory are the ones kept in the
vector store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.errors import MemoryQuotaExceeded
from gateway.memory.types import ContextItem, MemoryType, metadata_bytes


@dataclass
class _Entry:
    id: str
    agent: str
    key: str  # session (short-term) or task (working)
    text: str
    vector: np.ndarray
    ts: float
    metadata: dict[str, Any] = field(default_factory=dict)
    owner: str = ""  # the principal whose quota it counts against
    size: int = 0  # bytes it counts for: text, vector, metadata (as JSON) and 128 of overhead

    def __post_init__(self) -> None:
        self.size = len(self.text.encode()) + int(self.vector.nbytes) + metadata_bytes(self.metadata) + 128


class VolatileMemory:
    """Items per (agent, key) with an optional byte bound and time-to-live."""

    def __init__(
        self,
        memory_type: MemoryType,
        *,
        max_bytes: int | None = None,
        ttl_s: float | None = None,
        clock: Callable[[], float],
        owner_max_bytes: int | None = None,
        owner_limit_key: str = "",
        owner_full: Literal["refuse", "evict"] = "refuse",
    ) -> None:
        self.memory_type = memory_type
        self._max = max_bytes
        # per owner: past it a new item is refused, or the owner's own oldest are dropped
        self._owner_max = owner_max_bytes
        self._owner_limit_key = owner_limit_key
        self._owner_full = owner_full
        self._owner_bytes: dict[str, int] = {}
        self._owned: dict[str, OrderedDict[str, None]] = {}  # owner -> its item ids, oldest first
        self._ttl = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, _Entry] = OrderedDict()  # insertion order = age
        self._bytes = 0
        self._lock = threading.Lock()

    def _drop(self, item_id: str) -> None:
        e = self._items.pop(item_id)
        self._bytes -= e.size
        left = self._owner_bytes.get(e.owner, 0) - e.size
        owned = self._owned[e.owner]
        del owned[item_id]
        if owned:
            self._owner_bytes[e.owner] = left
        else:
            del self._owner_bytes[e.owner], self._owned[e.owner]

    def _expire(self) -> None:
        if self._ttl is None:
            return
        horizon = self._clock() - self._ttl
        while self._items:
            first = next(iter(self._items.values()))
            if first.ts > horizon:
                break
            self._drop(first.id)

    def add(
        self,
        item_id: str,
        agent: str,
        key: str,
        text: str,
        vector: np.ndarray,
        metadata: dict[str, Any],
        owner: str = "",
    ) -> None:
        """Keep one item.

        Raises:
            MemoryQuotaExceeded: ``owner`` would hold more than its bytes (``owner_full =
                "refuse"``), or the item alone is more than that (nothing is kept).
        """
        entry = _Entry(item_id, agent, key, text, vector, self._clock(), metadata, owner)
        with self._lock:
            self._expire()
            limit = self._owner_max
            if limit is not None and self._owner_full == "evict":
                owned = self._owned.get(owner)
                while owned and self._owner_bytes[owner] + entry.size > limit:
                    self._drop(next(iter(owned)))  # its own oldest, never another's
                    owned = self._owned.get(owner)
            held = self._owner_bytes.get(owner, 0)
            if limit is not None and held + entry.size > limit:
                raise MemoryQuotaExceeded(
                    f"{self._owner_limit_key}: principal {owner!r} holds {held} bytes of {self.memory_type} "
                    f"memory; {entry.size} more would pass its limit of {limit}"
                    + (": end a task (memory__end_task) or raise the limit" if held else ""),
                    reasons=[f"{self.memory_type} memory quota of {owner} reached"],
                )
            self._items[item_id] = entry
            self._owned.setdefault(owner, OrderedDict())[item_id] = None
            self._bytes += entry.size
            self._owner_bytes[owner] = held + entry.size
            while self._max is not None and self._bytes > self._max and self._items:
                self._drop(next(iter(self._items)))

    def search(
        self,
        agent: str,
        key: str | None,
        vector: np.ndarray,
        *,
        limit: int,
        min_score: float,
        filters: dict[str, Any] | None = None,
    ) -> list[ContextItem]:
        with self._lock:
            self._expire()
            pool = [
                e
                for e in self._items.values()
                if e.agent == agent and (key is None or e.key == key) and _meta_ok(e.metadata, filters)
            ]
        if not pool:
            return []
        scores = np.stack([e.vector for e in pool]) @ vector
        order = np.argsort(-scores)[:limit]
        return [
            ContextItem(
                pool[i].id,
                pool[i].text,
                self.memory_type,
                float(scores[i]),
                agent,
                pool[i].ts,
                metadata=dict(pool[i].metadata),
            )
            for i in order
            if scores[i] >= min_score
        ]

    def clear(self, agent: str, key: str | None = None) -> int:
        with self._lock:
            gone = [i for i, e in self._items.items() if e.agent == agent and (key is None or e.key == key)]
            for i in gone:
                self._drop(i)
        return len(gone)

    def items(self, agent: str | None = None) -> Iterable[ContextItem]:
        with self._lock:
            self._expire()
            pool = [e for e in self._items.values() if agent is None or e.agent == agent]
        return [
            ContextItem(e.id, e.text, self.memory_type, 1.0, e.agent, e.ts, metadata=dict(e.metadata))
            for e in pool
        ]

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._expire()
            return {"items": len(self._items), "bytes": self._bytes}


def _meta_ok(meta: dict[str, Any], filters: dict[str, Any] | None) -> bool:
    for k, want in (filters or {}).items():
        have = meta.get(k)
        if isinstance(want, list | tuple):
            if not any(_same(have, w) for w in want):
                return False
        elif not _same(have, want):
            return False
    return True


def _same(have: Any, want: Any) -> bool:
    """Equal as the vector stores match: a bool is not the integer 1 or 0 (Python says it is)."""
    return isinstance(have, bool) is isinstance(want, bool) and have == want
