"""One small vector store interface, three qdrant backends.

- ``EdgeStore``: Qdrant Edge (``qdrant-edge-py``), the embedded default: Qdrant's own segment engine
  in process (HNSW, int8 scalar quantisation, payload indexes, a WAL). Chosen over qdrant-client's
  local mode: brute force in numpy, filters a Python loop (``bench/context.py`` measures both).
- ``QdrantClientStore``: ``qdrant-client`` against a Qdrant server (``vector_db_url`` /
  ``QDRANT_URL``), or in local mode (``:memory:`` / a path; tests and tiny stores only).

Every backend keeps the seed's ``VectorConfig``: cosine, HNSW m=16, ef_construct=200, keyword
payload indexes on the agent id and the namespace. A collection records which embedder made
its vectors; opening it with another embedder or dimension raises ``EmbedderMismatch``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.errors import ContextError, VectorStoreUnavailable
from gateway.memory.points import (
    HELD,
    SERVED,
    CollectionSpec,
    Filter,
    FilterValue,
    Hit,
    Not,
    Point,
    Range,
    check_metadata,
    edge_match_value,
    point_id,
    qdrant_filter,
)

__all__ = [
    "HELD",
    "SERVED",
    "CollectionSpec",
    "EdgeStore",
    "Filter",
    "FilterValue",
    "Hit",
    "Not",
    "Point",
    "QdrantClientStore",
    "Range",
    "VectorStore",
    "check_metadata",
    "open_store",
    "point_id",
    "qdrant_filter",
]

HNSW_M = 16
HNSW_EF_CONSTRUCT = 200
OVERSAMPLING = 2.0
SEARCH_EF = 128  # recall 0.97-0.99 at 1M in the reference note; bench/context.py re-measures
KEYWORD_FIELDS = (
    "agent",
    "namespace",
    "kind",
    "memory_type",
    "base",
    "session",
    "task",
    "source",
    "principal",
    "screening",  # knowledge a search must not serve (points.SERVED)
)
FLOAT_FIELDS = ("ts",)


class VectorStore(Protocol):
    """The adapter: everything the context manager needs from a vector database."""

    backend: str

    def upsert(self, points: Sequence[Point]) -> None: ...

    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]: ...

    def delete(self, *, ids: Sequence[str] | None = None, filter: Filter | None = None) -> None: ...

    def set_payload(self, filter: Filter, payload: Mapping[str, Any]) -> None:
        """Set ``payload``'s fields on every point matching ``filter`` (others kept)."""
        ...

    def count(self, filter: Filter | None = None) -> int: ...

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]: ...

    def scroll(
        self,
        filter: Filter | None = None,
        *,
        limit: int = 10_000,
        newest_by: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Point]:
        """Points matching ``filter``: at most ``limit``; with ``newest_by`` (a float-indexed
        field) the ``limit`` highest first, in one page; with ``fields`` only those of each
        payload (a listing that needs a name or a sha reads no text)."""
        ...

    def optimize(self) -> None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# qdrant-client: a server, or local mode
# --------------------------------------------------------------------------------------------


class QdrantClientStore:
    """A collection through ``qdrant-client`` (server by URL, or local mode by path/``:memory:``)."""

    def __init__(
        self,
        spec: CollectionSpec,
        *,
        url: str | None = None,
        path: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        from qdrant_client import QdrantClient, models

        self._m = models
        self.spec = spec
        self.backend = "qdrant-server" if url else "qdrant-local"
        where = url or path or ":memory:"
        try:
            if url:
                self._c = QdrantClient(
                    url=url, api_key=api_key, timeout=int(max(1, timeout_s)), check_compatibility=False
                )
            elif path and path != ":memory:":
                Path(path).mkdir(parents=True, exist_ok=True)
                self._c = QdrantClient(path=path)
            else:
                self._c = QdrantClient(location=":memory:")
            exists = self._c.collection_exists(spec.name)
        except ContextError:
            raise
        except Exception as e:
            raise VectorStoreUnavailable(f"vector store {where} cannot be opened: {e}") from e
        if exists:
            info = self._c.get_collection(spec.name)
            check_metadata(spec, info.config.metadata, where)
            self._index_fields(set(info.payload_schema or ()))
        else:
            self._create()

    def _index_fields(self, indexed: set[str]) -> None:
        """Payload indexes on the fields filters use that ``indexed`` lacks: a collection made by
        an older version gains the fields added since (``principal``: the memory quota's count)."""
        if self.backend == "qdrant-local":
            return  # local mode ignores payload indexes (and warns): it filters in Python
        m = self._m
        for f in KEYWORD_FIELDS:
            if f not in indexed:
                self._c.create_payload_index(self.spec.name, f, m.PayloadSchemaType.KEYWORD)
        for f in FLOAT_FIELDS:
            if f not in indexed:
                self._c.create_payload_index(self.spec.name, f, m.PayloadSchemaType.FLOAT)

    def _create(self) -> None:
        m = self._m
        quant = None
        if self.spec.quantization == "int8":
            quant = m.ScalarQuantization(
                scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True)
            )
        self._c.create_collection(
            self.spec.name,
            vectors_config=m.VectorParams(size=self.spec.dimension, distance=m.Distance.COSINE),
            hnsw_config=m.HnswConfigDiff(m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT),
            quantization_config=quant,
            metadata=self.spec.metadata(),
        )
        self._index_fields(set())

    def _filter(self, flt: Filter | None) -> Any:
        return qdrant_filter(flt, self._m, self._m.Range)

    def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        m = self._m
        self._c.upsert(
            self.spec.name,
            points=[
                m.PointStruct(id=p.id, vector=list(map(float, p.vector)), payload=dict(p.payload))
                for p in points
            ],
            wait=True,
        )

    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        m = self._m
        res = self._c.query_points(
            self.spec.name,
            query=list(map(float, vector)),
            query_filter=self._filter(filter),
            limit=limit,
            with_payload=True,
            score_threshold=score_threshold,
            # local mode is always exact (and warns about search params)
            search_params=None
            if self.backend == "qdrant-local"
            else m.SearchParams(
                hnsw_ef=SEARCH_EF,
                exact=exact,
                quantization=m.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING),
            ),
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res.points]

    def delete(self, *, ids: Sequence[str] | None = None, filter: Filter | None = None) -> None:
        m = self._m
        if ids:
            self._c.delete(self.spec.name, points_selector=m.PointIdsList(points=list(ids)), wait=True)
        if filter:
            self._c.delete(
                self.spec.name, points_selector=m.FilterSelector(filter=self._filter(filter)), wait=True
            )

    def set_payload(self, filter: Filter, payload: Mapping[str, Any]) -> None:
        selector = self._m.FilterSelector(filter=self._filter(filter))
        self._c.set_payload(self.spec.name, payload=dict(payload), points=selector, wait=True)

    def count(self, filter: Filter | None = None) -> int:
        return int(self._c.count(self.spec.name, count_filter=self._filter(filter), exact=True).count)

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        recs = self._c.retrieve(self.spec.name, ids=list(ids), with_payload=True, with_vectors=with_vectors)
        return [
            Point(str(r.id), _flat(r.vector) if with_vectors else [], dict(r.payload or {})) for r in recs
        ]

    def scroll(
        self,
        filter: Filter | None = None,
        *,
        limit: int = 10_000,
        newest_by: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Point]:
        m = self._m
        payload: Any = list(fields) if fields is not None else True
        flt = self._filter(filter)
        order = None if newest_by is None else m.OrderBy(key=newest_by, direction=m.Direction.DESC)

        def page(offset: Any, n: int) -> tuple[Sequence[Any], Any]:
            return self._c.scroll(
                self.spec.name,
                scroll_filter=flt,
                limit=n,
                offset=offset,
                with_payload=payload,
                order_by=order,
            )

        return _paged(page, limit, ordered=order is not None)

    def optimize(self) -> None:
        """A server indexes on its own; local mode has no index."""

    def close(self) -> None:
        self._c.close()


# --------------------------------------------------------------------------------------------
# Qdrant Edge: the embedded default
# --------------------------------------------------------------------------------------------


class EdgeStore:
    """One Qdrant Edge shard in ``path`` (one collection), plus a sidecar naming its embedder.

    Qdrant Edge has no collection metadata, so ``symbi-collection.json`` beside the shard
    records the embedder. One process may open a shard (its WAL is locked); calls are
    serialised here because the shard object is shared between worker threads.
    """

    backend = "qdrant-edge"

    def __init__(self, spec: CollectionSpec, path: Path, *, search_threads: int | None = None) -> None:
        import qdrant_edge as qe

        self._qe = qe
        self.spec = spec
        self._search_threads = search_threads  # None: one per CPU (Qdrant's default)
        # int8 candidates re-scored with the float32 originals, twice as many as asked for
        self._rescore = qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
        self._lock = threading.Lock()
        self.path = path
        shard_dir = path / "shard"
        meta_path = path / "symbi-collection.json"
        try:
            if meta_path.exists():
                check_metadata(spec, json.loads(meta_path.read_text(encoding="utf-8")), str(path))
                self._shard = qe.EdgeShard.load(
                    str(shard_dir),
                    qe.EdgeConfig(max_search_threads=search_threads) if search_threads else None,
                )
            else:
                if shard_dir.exists() and any(shard_dir.iterdir()):
                    check_metadata(spec, None, str(path))
                path.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(shard_dir), self._config())
                meta_path.write_text(json.dumps({**spec.metadata(), "name": spec.name}), encoding="utf-8")
            # a shard made by an older version gains the indexes of the fields added since
            indexed = set(self._shard.info().payload_schema)
            for f in (*KEYWORD_FIELDS, *FLOAT_FIELDS):
                if f not in indexed:
                    kind = qe.PayloadSchemaType.Float if f in FLOAT_FIELDS else qe.PayloadSchemaType.Keyword
                    self._shard.update(qe.UpdateOperation.create_field_index(f, kind))
        except ContextError:
            raise
        except Exception as e:
            hint = " (is a gateway already running on this data dir?)" if "WouldBlock" in str(e) else ""
            raise VectorStoreUnavailable(f"embedded vector store {path} cannot be opened{hint}: {e}") from e

    def _config(self) -> Any:
        qe = self._qe
        quant = None
        if self.spec.quantization == "int8":
            quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.spec.dimension, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=10_000
            ),
            quantization_config=quant,
            max_search_threads=self._search_threads,
        )

    def _filter(self, flt: Filter | None) -> Any:
        return qdrant_filter(flt, self._qe, self._qe.RangeFloat, edge_match_value)

    def upsert(self, points: Sequence[Point]) -> None:
        if not points:
            return
        qe = self._qe
        ops = [qe.Point(p.id, [float(x) for x in p.vector], dict(p.payload)) for p in points]
        with self._lock:
            self._shard.update(qe.UpdateOperation.upsert_points(ops))

    def search(
        self,
        vector: Sequence[float],
        *,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        qe = self._qe
        req = qe.SearchRequest(
            query=qe.Query.Nearest([float(x) for x in vector]),
            limit=limit,
            filter=self._filter(filter),
            params=qe.SearchParams(hnsw_ef=SEARCH_EF, exact=exact, quantization=self._rescore),
            with_payload=True,
            score_threshold=score_threshold,
        )
        with self._lock:
            res = self._shard.search(req)
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in res]

    def delete(self, *, ids: Sequence[str] | None = None, filter: Filter | None = None) -> None:
        qe = self._qe
        with self._lock:
            if ids:
                self._shard.update(qe.UpdateOperation.delete_points(list(ids)))
            if filter:
                self._shard.update(qe.UpdateOperation.delete_points_by_filter(self._filter(filter)))

    def set_payload(self, filter: Filter, payload: Mapping[str, Any]) -> None:
        op = self._qe.UpdateOperation.set_payload_by_filter(self._filter(filter), dict(payload))
        with self._lock:
            self._shard.update(op)

    def count(self, filter: Filter | None = None) -> int:
        with self._lock:
            return int(self._shard.count(self._qe.CountRequest(exact=True, filter=self._filter(filter))))

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[Point]:
        with self._lock:
            recs = self._shard.retrieve(list(ids), with_payload=True, with_vector=with_vectors)
        return [
            Point(str(r.id), _flat(r.vector) if with_vectors else [], dict(r.payload or {})) for r in recs
        ]

    def scroll(
        self,
        filter: Filter | None = None,
        *,
        limit: int = 10_000,
        newest_by: str | None = None,
        fields: Sequence[str] | None = None,
    ) -> list[Point]:
        qe = self._qe
        payload: Any = qe.PayloadSelector.Include(list(fields)) if fields is not None else True
        flt = self._filter(filter)
        order = None if newest_by is None else qe.OrderBy(newest_by, qe.Direction.Desc)

        def page(offset: Any, n: int) -> tuple[Sequence[Any], Any]:
            req = qe.ScrollRequest(offset=offset, limit=n, filter=flt, with_payload=payload, order_by=order)
            with self._lock:
                return self._shard.scroll(req)

        return _paged(page, limit, ordered=order is not None)

    def indexed(self) -> tuple[int, int]:
        """(points, vectors in an HNSW index)."""
        with self._lock:
            info = self._shard.info()
        return int(info.points_count), int(info.indexed_vectors_count)

    def optimize(self) -> None:
        """Build the HNSW index over new points. Holds the GIL for its duration (seconds per 10k
        points), so it runs after bulk ingestion (`symbi knowledge add`), never in a serving gateway."""
        with self._lock:
            self._shard.optimize()

    def close(self) -> None:
        with self._lock:
            self._shard.flush()
            self._shard.close()


def open_store(
    spec: CollectionSpec,
    *,
    url: str | None,
    data_dir: Path,
    backend: str = "edge",
    api_key: str | None = None,
) -> VectorStore:
    """A Qdrant server when ``url`` is set, else the embedded store under ``data_dir``."""
    if url:
        return QdrantClientStore(spec, url=url, api_key=api_key)
    if backend == "edge":
        return EdgeStore(spec, data_dir / "vectors" / spec.name)
    if backend == "local":
        return QdrantClientStore(spec, path=str(data_dir / "vectors-local" / spec.name))
    if backend == "memory":
        return QdrantClientStore(spec, path=":memory:")
    raise ContextError(f"unknown vector store backend {backend!r} (edge | local | memory, or a url)")


def _paged(
    page: Callable[[Any, int], tuple[Sequence[Any], Any]], limit: int, *, ordered: bool
) -> list[Point]:
    """A scroll's points, from ``page(offset, n)`` (records and the next offset): ordered, one
    page (Qdrant pages no ordered scroll by offset); else pages of at most 1,000 until
    ``limit``, the last page, or an empty one."""
    out: list[Point] = []
    offset = None
    while len(out) < limit:
        recs, offset = page(offset, limit - len(out) if ordered else min(1000, limit - len(out)))
        out += [Point(str(r.id), [], dict(r.payload or {})) for r in recs]
        if ordered or offset is None or not recs:
            break
    return out


def _flat(v: Any) -> list[float]:
    """A record's single dense vector as floats (named / multi vectors are not used here)."""
    if isinstance(v, dict):
        v = v.get("", next(iter(v.values()), []))
    return [float(x) for x in v] if isinstance(v, list) and (not v or not isinstance(v[0], list)) else []


def chunks(seq: Sequence[Point], size: int) -> Iterable[Sequence[Point]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
