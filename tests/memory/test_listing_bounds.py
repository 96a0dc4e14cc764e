"""Attack (session 42): a listing read every payload in full to show a few fields of some.

``memory://A/long_term`` read all of A's memories from the store (up to
``max_memories_per_principal``, 10,000 of up to 32,000 characters and 4 KB of metadata each:
some 360 MB held by the gateway at once per read, a few reads in parallel enough to exhaust
it) and then showed the newest 100. And each ``knowledge__context`` without ``bases`` read
every file's first chunk, its text included, only to learn the bases' names (the keyword
index read them again for each file's sha). Now the store is asked for the newest ``limit``
memories, in order, and listings read only the fields they use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.context import CallContext
from gateway.memory.store import Point
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway

pytestmark = pytest.mark.anyio


def _spy(gw: Gateway) -> list[list[Point]]:
    """Each scroll's answer from the real store under the gateway's guard."""
    store = gw.builtins["memory"].s.m.store.inner  # type: ignore[attr-defined]
    seen: list[list[Point]] = []
    real: Callable[..., list[Point]] = store.scroll

    def scroll(*args: Any, **kwargs: Any) -> list[Point]:
        got = real(*args, **kwargs)
        seen.append(got)
        return got

    store.scroll = scroll
    return seen


async def test_reading_an_agents_memories_reads_only_the_newest_it_shows(tmp_path: Path) -> None:
    async with gateway(_config(tmp_path)) as gw:
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        now = m.clock()
        for i in range(130):
            m.clock = lambda i=i: now + i
            await call(gw, ALICE, "memory__store", text=f"note {i} " + "x" * 2000)
        seen = _spy(gw)
        got = await gw.call(
            CallContext(
                principal=ALICE,
                kind="resources/read",
                target="memory://agent-a/long_term",
                upstream=gw.upstream_info("memory"),
            )
        )
    texts = [i["text"].split(" x")[0] for i in json.loads(got.contents[0].text)]
    assert texts == [f"note {i}" for i in range(129, 29, -1)]  # the newest 100, newest first
    assert sum(len(page) for page in seen) == 100  # 130 were read before


async def test_listing_knowledge_bases_reads_no_passage_text(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(5):
        (docs / f"f{i}.md").write_text(f"# Travel {i}\nTrains are booked through the desk, part {i}.\n")
    async with gateway(_config(tmp_path)) as gw:
        gw.builtins["knowledge"].s.kb.add("hr", docs)  # type: ignore[attr-defined]
        seen = _spy(gw)
        got = await call(gw, ALICE, "knowledge__context", query="how are trains booked")
        assert got.structured_content is not None and got.structured_content["citations"]
    assert seen and not [p for page in seen for p in page if "text" in p.payload]
