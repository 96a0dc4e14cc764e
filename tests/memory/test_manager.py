"""The ContextManager's memory types, with an injected clock (no waiting in tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gateway.errors import ContextError
from gateway.memory.embed import HashingEmbedder
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.manager import DAY_S, ContextManager, MemorySettings, knowledge_filter
from gateway.memory.store import CollectionSpec, EdgeStore
from gateway.memory.types import AgentContext, ContextQuery
from tests.memory.conftest import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _manager(path: Path, clock: Clock, **settings: object) -> ContextManager:
    emb = HashingEmbedder(384)
    spec = CollectionSpec("m", 384, emb.id)
    return ContextManager(
        lambda: EdgeStore(spec, path),
        lambda: emb,
        MemorySettings(**settings),  # type: ignore[arg-type]
        clock=clock,
    )


@pytest.fixture
def cm(tmp_path: Path, clock: Clock) -> Iterator[ContextManager]:
    m = _manager(tmp_path / "v", clock, cache_bytes=10_000, short_term_ttl_s=600, retention_days=30)
    yield m
    m.close()


def _texts(items: list) -> list[str]:  # type: ignore[type-arg]
    return [i.text for i in items]


def test_long_term_is_per_agent(cm: ContextManager) -> None:
    cm.store_context("A", AgentContext("the deploy password rotates on mondays"))
    cm.store_context("B", AgentContext("the deploy window is on tuesdays"))
    a = cm.retrieve_context("A", ContextQuery("deploy", memory_types=("long_term",), top_k=10))
    b = cm.retrieve_context("B", ContextQuery("deploy", memory_types=("long_term",), top_k=10))
    assert _texts(a) == ["the deploy password rotates on mondays"]
    assert _texts(b) == ["the deploy window is on tuesdays"]


def test_shared_namespace_is_read_by_namespace(cm: ContextManager) -> None:
    cm.store_context("A", AgentContext("release train leaves at noon", "shared", namespace="team"))
    cm.store_context("A", AgentContext("private note about the release", "long_term"))
    got = cm.retrieve_context("B", ContextQuery("release", memory_types=("shared",), namespaces=("team",)))
    assert _texts(got) == ["release train leaves at noon"]
    assert got[0].namespace == "team" and got[0].agent == "A"
    none = cm.retrieve_context("B", ContextQuery("release", memory_types=("shared",), namespaces=("other",)))
    assert none == []


def test_short_term_is_per_session_bounded_and_expires(cm: ContextManager, clock: Clock) -> None:
    cm.store_context("A", AgentContext("user prefers metric units", "short_term", session="s1"))
    cm.store_context("A", AgentContext("user prefers dark mode", "short_term", session="s2"))
    s1 = cm.retrieve_context("A", ContextQuery("prefers", memory_types=("short_term",), session="s1"))
    assert _texts(s1) == ["user prefers metric units"]
    clock.advance(601)  # past short_term_ttl_s
    assert cm.retrieve_context("A", ContextQuery("prefers", memory_types=("short_term",), session="s1")) == []
    # the byte bound: each item is text + a 384-d float32 vector (~1.7 kB); 10 kB holds a handful
    for i in range(20):
        cm.store_context("A", AgentContext(f"note number {i}", "short_term", session="s3"))
    st = cm.short_term.stats()
    assert st["bytes"] <= 10_000 and 0 < st["items"] < 20
    kept = cm.retrieve_context(
        "A", ContextQuery("note number", memory_types=("short_term",), session="s3", top_k=50)
    )
    assert "note number 19" in _texts(kept) and "note number 0" not in _texts(kept)  # oldest went first


def test_working_memory_is_cleared_when_the_task_ends(cm: ContextManager) -> None:
    cm.store_context("A", AgentContext("step 1 done: fetched the invoices", "working", task="t1"))
    cm.store_context("A", AgentContext("step 1 of other task", "working", task="t2"))
    q = ContextQuery("step 1", memory_types=("working",), task="t1")
    assert len(cm.retrieve_context("A", q)) == 1
    assert cm.end_task("A", "t1") == 1
    assert cm.retrieve_context("A", q) == []
    assert len(cm.retrieve_context("A", ContextQuery("step 1", memory_types=("working",), task="t2"))) == 1
    with pytest.raises(ContextError):
        cm.store_context("A", AgentContext("no task", "working"))


def test_retention_purge_with_an_injected_clock(cm: ContextManager, clock: Clock) -> None:
    cm.store_context("A", AgentContext("old fact about the warehouse"))
    cm.store_context("A", AgentContext("old shared fact", "shared", namespace="team"))
    clock.advance(20 * DAY_S)
    cm.store_context("A", AgentContext("newer fact about the warehouse"))
    assert cm.purge() == 0  # nothing is 30 days old yet
    clock.advance(11 * DAY_S)  # the first two are 31 days old, the third 11
    assert cm.purge() == 2
    left = cm.retrieve_context(
        "A", ContextQuery("fact", memory_types=("long_term", "shared"), namespaces=("team",))
    )
    assert _texts(left) == ["newer fact about the warehouse"]
    assert cm.purge(older_than_s=10 * DAY_S, agent="B") == 0  # another agent's scope
    assert cm.purge(older_than_s=10 * DAY_S) == 1


def test_filters_on_metadata_and_min_score(cm: ContextManager) -> None:
    cm.store_context("A", AgentContext("invoice 7 was paid", metadata={"project": "billing"}))
    cm.store_context("A", AgentContext("invoice 8 is late", metadata={"project": "audit"}))
    got = cm.retrieve_context("A", ContextQuery("invoice", filters={"project": "billing"}))
    assert _texts(got) == ["invoice 7 was paid"]
    assert cm.retrieve_context("A", ContextQuery("invoice", min_score=0.99)) == []
    with pytest.raises(ContextError):  # a filter cannot name a system field through a path
        cm.retrieve_context("A", ContextQuery("invoice", filters={"agent.x": "B"}))


def test_bad_input_is_refused(cm: ContextManager) -> None:
    for bad in (
        AgentContext(""),
        AgentContext("x" * 40_000),
        AgentContext("x", "shared"),
        AgentContext("x", "shared", namespace="../etc"),
        AgentContext("x", "episodic"),  # type: ignore[arg-type]  # an unknown memory type: the point
    ):
        with pytest.raises(ContextError):
            cm.store_context("A", bad)
    with pytest.raises(ContextError):
        cm.store_context("", AgentContext("x"))


def test_long_term_survives_a_reopen(tmp_path: Path, clock: Clock) -> None:
    m = _manager(tmp_path / "v", clock)
    item = m.store_context("A", AgentContext("the vault lives on host nine"))
    m.close()
    m2 = _manager(tmp_path / "v", clock)
    got = m2.retrieve_context("A", ContextQuery("vault host", memory_types=("long_term",)))
    assert [g.id for g in got] == [item]
    assert np.isfinite(got[0].score)
    m2.close()


def test_search_knowledge_is_per_base(cm: ContextManager, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("## Parking\nbikes go to the basement cage\n")
    (docs / "b.md").write_text("## Parking\nbikes are not allowed in the lobby\n")
    kb = KnowledgeBases(cm)
    kb.add("alpha", docs / "a.md")
    kb.add("beta", docs / "b.md")
    got = cm.search_knowledge("A", "where do bikes go", bases=["alpha"], top_k=5)
    assert [(i.base, Path(i.source).name, i.heading) for i in got] == [("alpha", "a.md", "Parking")]
    assert {i.base for i in cm.search_knowledge("A", "bikes", bases=["alpha", "beta"])} == {"alpha", "beta"}
    with pytest.raises(ContextError):
        cm.search_knowledge("A", "bikes", bases=["../beta"])


def test_knowledge_filters_name_the_source_or_front_matter_keys_only() -> None:
    """Found by mutation testing (group "memory-security"): ``source`` is the chunk's own path
    field, every other key a front-matter one under ``meta.``; bad keys are refused."""
    assert knowledge_filter({"source": "guide/a.md", "team": "ops"}) == {
        "source": "guide/a.md",
        "meta.team": "ops",
    }
    assert knowledge_filter({"team": ["ops", "dev"]}) == {"meta.team": ["ops", "dev"]}
    assert knowledge_filter(None) == {}
    for bad in ({"base.x": "y"}, {"team": {"nested": 1}}, {"team": [1]}):
        with pytest.raises(ContextError):
            knowledge_filter(bad)
