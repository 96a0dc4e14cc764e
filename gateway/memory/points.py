"""The vector store's values: points, hits, filters, a collection's spec and its checks
(``gateway.memory.store`` holds the backends)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import EmbedderMismatch


@dataclass(frozen=True)
class Range:
    """A numeric range condition on a payload field (inclusive bounds)."""

    gte: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Not:
    """A field that must not hold ``value`` (a point without the field passes)."""

    value: str | int | bool


# field -> exact value, any of a list of values, a numeric range, or a value it must not hold
FilterValue = str | int | bool | Sequence[str] | Range | Not
Filter = Mapping[str, FilterValue]


@dataclass(frozen=True)
class Point:
    id: str
    vector: Sequence[float]
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection is for: its dimension and the embedder that makes its vectors."""

    name: str
    dimension: int
    embedder: str  # e.g. "onnx:all-MiniLM-L6-v2-int8" (model id, not a path)
    quantization: str = "int8"  # "int8" scalar quantisation or "none"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        return {"symbi_embedder": self.embedder, "symbi_dimension": self.dimension}


# the payload of a knowledge file's chunks the screening now flags, kept for the operator to
# settle (``KnowledgeBases.add``'s ``held``), and the filter condition that serves no such
# chunk to agents. A keyword, not a bool: Qdrant Edge matches True as the integer 1
HELD: Mapping[str, str] = {"screening": "held"}
SERVED: Mapping[str, FilterValue] = {"screening": Not("held")}


def point_id(key: str) -> str:
    """A stable UUID for a string key (Qdrant ids are unsigned ints or UUIDs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "symbi:" + key))


def check_metadata(spec: CollectionSpec, found: Mapping[str, Any] | None, where: str) -> None:
    """Refuse to mix vectors: the stored embedder and dimension must be the ones asked for."""
    if not found:
        raise EmbedderMismatch(
            f"{where}: collection {spec.name!r} records no embedder; refusing to add {spec.embedder} vectors "
            "to vectors of unknown origin (move it aside, or delete the collection on the server, and re-ingest)"
        )
    emb, dim = found.get("symbi_embedder"), found.get("symbi_dimension")
    if emb != spec.embedder or dim != spec.dimension:
        raise EmbedderMismatch(
            f"{where}: collection {spec.name!r} holds {dim}-d vectors from {emb!r}, but the configured "
            f"embedder is {spec.embedder!r} with [context] embedding_dimension = {spec.dimension}: "
            "vectors are never mixed; use the original embedder or re-ingest into a new data dir"
        )


def qdrant_filter(
    flt: Filter | None, ns: Any, range_type: Any, value: Callable[[Any], Any] = lambda v: v
) -> Any:
    """A ``Filter`` as both backends take it: qdrant-client's models and qdrant-edge name the
    conditions alike and differ only in the range's type (``Range`` / ``RangeFloat``) and in
    how a matched value must be passed (``value``: see ``edge_match_value``)."""
    if not flt:
        return None
    must: list[Any] = []
    must_not: list[Any] = []
    for key, v in flt.items():
        if isinstance(v, Not):
            must_not.append(ns.FieldCondition(key=key, match=ns.MatchValue(value=value(v.value))))
        elif isinstance(v, Range):
            must.append(ns.FieldCondition(key=key, range=range_type(gte=v.gte, lte=v.lte)))
        elif isinstance(v, list | tuple):
            must.append(ns.FieldCondition(key=key, match=ns.MatchAny(any=list(v))))
        else:
            must.append(ns.FieldCondition(key=key, match=ns.MatchValue(value=value(v))))
    return ns.Filter(must=must or None, must_not=must_not or None)


def edge_match_value(v: Any) -> Any:
    """A value for qdrant-edge's ``MatchValue``. Its binding reads a Python bool as the int it
    subclasses, so ``True`` matched the integer 1 and never a stored ``true``; numpy's bool is
    no int and reaches the binding's bool match."""
    return np.bool_(v) if isinstance(v, bool) else v
