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
