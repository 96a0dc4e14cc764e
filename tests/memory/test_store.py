"""The vector store adapter's suite, run against every backend that can run here.

Backends: Qdrant Edge (the embedded default), qdrant-client local mode on disk and in memory,
and a Qdrant server when ``QDRANT_URL`` is set. No Qdrant server can be installed on this
machine (no registry carries one: see the reference note), so the server run is skipped
unless a URL is given.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import EmbedderMismatch, VectorStoreUnavailable
from gateway.memory.store import (
    FLOAT_FIELDS,
    HELD,
    KEYWORD_FIELDS,
    SERVED,
    CollectionSpec,
    EdgeStore,
    Point,
    QdrantClientStore,
    Range,
    VectorStore,
    point_id,
)

DIM = 16
BACKENDS = ["edge", "local-path", "local-memory", "server"]


def _opener(backend: str, root: Path) -> Callable[[CollectionSpec], VectorStore]:
    if backend == "edge":
        return lambda spec: EdgeStore(spec, root / "edge")
    if backend == "local-path":
        return lambda spec: QdrantClientStore(spec, path=str(root / "local"))
    if backend == "local-memory":
        return lambda spec: QdrantClientStore(spec, path=":memory:")
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("no Qdrant server here (none installable from the registries); set QDRANT_URL to run")
    return lambda spec: QdrantClientStore(spec, url=url)


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[CollectionSpec], VectorStore]:
    return _opener(request.param, tmp_path)


@pytest.fixture
def spec() -> CollectionSpec:
    return CollectionSpec(f"t_{uuid.uuid4().hex[:8]}", DIM, "hash:test")


@pytest.fixture
def store(opener: Callable[[CollectionSpec], VectorStore], spec: CollectionSpec) -> Iterator[VectorStore]:
    s = opener(spec)
    yield s
    s.close()


def _points(n: int, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(
            point_id(f"p{i}"),
            rng.normal(size=DIM).tolist(),
            {
                "agent": f"a{i % 3}",
                "namespace": f"agent:a{i % 3}",
                "ts": float(i),
                "text": f"t{i}",
                "kind": "memory",
            },
        )
        for i in range(n)
    ]


def test_upsert_search_finds_the_point_itself(store: VectorStore) -> None:
    pts = _points(60)
    store.upsert(pts)
    assert store.count() == 60
    for p in pts[:5]:
        hits = store.search(p.vector, limit=3)
        assert hits[0].id == p.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].payload["text"] == p.payload["text"]


def test_filters_keep_other_agents_out(store: VectorStore) -> None:
    pts = _points(60)
    store.upsert(pts)
    target = pts[1]  # agent a1
    hits = store.search(target.vector, limit=60, filter={"agent": "a0"})
    assert hits and all(h.payload["agent"] == "a0" for h in hits)
    assert target.id not in {h.id for h in hits}
    anyof = store.search(target.vector, limit=60, filter={"agent": ["a0", "a1"]})
    assert {h.payload["agent"] for h in anyof} == {"a0", "a1"}
    assert store.count({"agent": "a2"}) == 20
    assert store.count({"ts": Range(gte=50.0)}) == 10
    assert store.count({"ts": Range(lte=9.0), "agent": "a0"}) == 4


def test_update_is_visible_to_the_next_search(store: VectorStore) -> None:
    pts = _points(30)
    store.upsert(pts)
    moved = Point(pts[0].id, pts[7].vector, {**pts[0].payload, "text": "moved"})
    store.upsert([moved])
    hits = store.search(pts[7].vector, limit=2)
    assert {h.id for h in hits} == {pts[0].id, pts[7].id}
    assert store.retrieve([pts[0].id])[0].payload["text"] == "moved"
    assert store.count() == 30


def test_delete_by_id_and_by_filter(store: VectorStore) -> None:
    pts = _points(30)
    store.upsert(pts)
    store.delete(ids=[pts[0].id, pts[1].id])
    assert store.count() == 28
    assert store.retrieve([pts[0].id]) == []
    store.delete(filter={"agent": "a2"})
    assert store.count({"agent": "a2"}) == 0
    assert store.count() == 28 - 10


def test_retrieve_with_vectors_and_scroll(store: VectorStore) -> None:
    pts = _points(25)
    store.upsert(pts)
    got = store.retrieve([pts[3].id], with_vectors=True)[0]
    v = np.asarray(got.vector)
    assert v.shape == (DIM,)
    # cosine collections keep the direction (stored normalised)
    assert float(v @ np.asarray(pts[3].vector)) / np.linalg.norm(pts[3].vector) == pytest.approx(
        1.0, abs=1e-3
    )
    assert (got.id, got.payload["text"]) == (pts[3].id, "t3")
    assert store.retrieve([pts[4].id])[0].vector == []  # without vectors: none sent back
    assert len(store.scroll({"agent": "a1"})) == 8
    assert {p.id for p in store.scroll()} == {p.id for p in pts}


def test_score_threshold_and_exact(store: VectorStore) -> None:
    pts = _points(40)
    store.upsert(pts)
    hits = store.search(pts[5].vector, limit=40, score_threshold=0.99)
    assert [h.id for h in hits] == [pts[5].id]
    exact = store.search(pts[5].vector, limit=5, exact=True)
    assert exact[0].id == pts[5].id


@pytest.mark.parametrize("backend", ["edge", "local-path"])
def test_persisted_and_reopened(backend: str, tmp_path: Path, spec: CollectionSpec) -> None:
    open_ = _opener(backend, tmp_path)
    s = open_(spec)
    s.upsert(_points(20))
    s.close()
    s2 = open_(spec)
    assert s2.count() == 20
    assert s2.search(_points(20)[4].vector, limit=1)[0].id == point_id("p4")
    s2.close()


@pytest.mark.parametrize("backend", ["edge", "local-path"])
def test_another_embedder_is_refused_never_mixed(backend: str, tmp_path: Path, spec: CollectionSpec) -> None:
    open_ = _opener(backend, tmp_path)
    open_(spec).close()
    with pytest.raises(EmbedderMismatch):
        open_(CollectionSpec(spec.name, DIM, "onnx:other-model"))
    with pytest.raises(EmbedderMismatch):
        open_(CollectionSpec(spec.name, DIM * 2, spec.embedder))
    s = open_(spec)  # the right embedder still opens it
    s.close()


def test_edge_shard_has_one_owner(tmp_path: Path, spec: CollectionSpec) -> None:
    """A second opener of the same embedded store (another gateway process, say) fails closed."""
    first = EdgeStore(spec, tmp_path / "edge")
    try:
        with pytest.raises(VectorStoreUnavailable):
            EdgeStore(spec, tmp_path / "edge")
    finally:
        first.close()


def test_unreachable_server_is_a_clear_error(spec: CollectionSpec) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    with pytest.raises(VectorStoreUnavailable):
        QdrantClientStore(spec, url=f"http://127.0.0.1:{port}", timeout_s=1)


def test_edge_hnsw_index_is_built_and_searched(tmp_path: Path, spec: CollectionSpec) -> None:
    s = EdgeStore(spec, tmp_path / "edge")
    pts = _points(2000, seed=3)
    s.upsert(pts)
    s.optimize()
    total, _indexed = s.indexed()
    assert total == 2000
    assert s.search(pts[1234].vector, limit=1)[0].id == pts[1234].id
    s.close()


def test_a_shard_from_an_older_version_gains_the_indexes_added_since(
    tmp_path: Path, spec: CollectionSpec
) -> None:
    """A store made before the memory quota counted memories by ``principal`` had no index on
    it: each count scanned every point. Opening it adds the index of every field filters use."""
    import qdrant_edge as qe

    store = EdgeStore(spec, tmp_path / "edge")
    store._shard.update(qe.UpdateOperation.delete_field_index("principal"))  # as an older version made it
    assert "principal" not in store._shard.info().payload_schema
    store.upsert(_points(5))
    store.close()
    again = EdgeStore(spec, tmp_path / "edge")
    try:
        assert set(again._shard.info().payload_schema) >= {*KEYWORD_FIELDS, *FLOAT_FIELDS}
        assert again.count() == 5
    finally:
        again.close()


def test_scroll_newest_first_and_only_the_fields_asked(store: VectorStore) -> None:
    store.upsert(_points(30))
    newest = store.scroll({"agent": "a0"}, limit=4, newest_by="ts", fields=("ts", "agent"))
    assert [p.payload for p in newest] == [{"ts": float(t), "agent": "a0"} for t in (27, 24, 21, 18)]
    assert {frozenset(p.payload) for p in store.scroll(fields=("text",))} == {frozenset({"text"})}


def test_a_marked_point_is_left_out_by_a_must_not_condition(store: VectorStore) -> None:
    """``set_payload`` marks points by filter; ``Not`` leaves them out of every read (a point
    without the field passes): how a held knowledge file is kept but not served."""
    store.upsert(_points(9))
    store.set_payload({"agent": "a1"}, HELD)
    served = {**SERVED, "kind": "memory"}
    assert store.count(served) == 6
    assert {p.payload["agent"] for p in store.scroll(served)} == {"a0", "a2"}
    hits = store.search(_points(9)[1].vector, limit=9, filter=served)
    assert len(hits) == 6 and all(h.payload["agent"] != "a1" for h in hits)
    assert {p.payload.get("screening") for p in store.retrieve([point_id("p1")])} == {"held"}
