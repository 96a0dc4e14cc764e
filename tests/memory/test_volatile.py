"""Volatile memory's byte accounting (found by mutation testing, group "memory"): what a
cleared or evicted item took is given back, so the bound counts what is held, no more."""

from __future__ import annotations

import numpy as np

from gateway.memory.volatile import VolatileMemory
from tests.memory.conftest import Clock


def _vec() -> np.ndarray:
    return np.zeros(4, dtype=np.float32)


def test_the_bytes_held_are_the_sum_of_the_items_held() -> None:
    mem = VolatileMemory("short_term", max_bytes=None, clock=Clock())
    for i, text in enumerate(("a" * 10, "b" * 20, "c" * 30)):
        mem.add(f"id{i}", "agent-a", "s1" if i < 2 else "s2", text, _vec(), {})
    each = 16 + 128  # the vector's bytes and the fixed overhead of an entry
    assert mem.stats() == {"items": 3, "bytes": 60 + 3 * each}
    assert mem.clear("agent-a", "s1") == 2
    assert mem.stats() == {"items": 1, "bytes": 30 + each}


def test_the_bound_evicts_the_oldest_and_counts_what_is_left() -> None:
    each = 100 + 16 + 128
    mem = VolatileMemory("short_term", max_bytes=2 * each, clock=Clock())
    for i in range(3):  # the third pushes the first out
        mem.add(f"id{i}", "agent-a", "s", "x" * 100, _vec(), {})
    assert mem.stats() == {"items": 2, "bytes": 2 * each}
    assert [i.id for i in mem.items("agent-a")] == ["id1", "id2"]


def _unit(*xs: float) -> np.ndarray:
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_search_keeps_to_the_agent_key_and_metadata_and_ranks_by_score() -> None:
    """Found by mutation testing (group "memory-security"): volatile search was tested through a
    gateway only; here each of its filters, its order and the items' fields are checked."""
    mem = VolatileMemory("working", clock=Clock())
    mem.add("near", "agent-a", "t1", "near", _unit(1, 0.1, 0, 0), {"project": "x"})
    mem.add("far", "agent-a", "t1", "far", _unit(0.3, 1, 0, 0), {"project": "x"})
    mem.add("other-project", "agent-a", "t1", "p", _unit(1, 0, 0, 0), {"project": "y"})
    mem.add("other-task", "agent-a", "t2", "t", _unit(1, 0, 0, 0), {"project": "x"})
    mem.add("other-agent", "agent-b", "t1", "b", _unit(1, 0, 0, 0), {"project": "x"})
    q = _unit(1, 0, 0, 0)
    got = mem.search("agent-a", "t1", q, limit=5, min_score=-1.0, filters={"project": "x"})
    assert [(i.id, i.memory_type, i.agent) for i in got] == [
        ("near", "working", "agent-a"),
        ("far", "working", "agent-a"),
    ]
    assert got[0].score > got[1].score and got[0].metadata == {"project": "x"}
    assert got[0].ts == Clock().now and got[0].text == "near"
    # min_score is inclusive: a score of exactly 1.0 passes 1.0, "far" (below 0.5) does not pass 0.5
    exact = mem.search("agent-a", "t2", q, limit=5, min_score=1.0)
    assert [i.id for i in exact] == ["other-task"]
    assert [
        i.id for i in mem.search("agent-a", "t1", q, limit=5, min_score=0.5, filters={"project": "x"})
    ] == ["near"]
    top = mem.search("agent-a", "t1", q, limit=1, min_score=-1.0, filters={"project": "x"})
    assert [i.id for i in top] == ["near"]  # the limit keeps the best, not the worst
    assert {i.id for i in mem.search("agent-a", None, q, limit=9, min_score=-1.0)} == {
        "near",
        "far",
        "other-project",
        "other-task",
    }
    assert mem.search("agent-c", None, q, limit=9, min_score=-1.0) == []


def test_metadata_counts_as_its_json() -> None:
    """Metadata is held with the item, so the bound counts it (session 36: it counted none)."""
    mem = VolatileMemory("short_term", max_bytes=None, clock=Clock())
    mem.add("id0", "agent-a", "s", "x", _vec(), {"k": "v" * 50})
    assert mem.stats() == {"items": 1, "bytes": 1 + 16 + 128 + len('{"k":""}') + 50}
