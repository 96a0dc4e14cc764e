"""Attack (session 42): a memory past ``knowledge_retention_days`` is still read.

The retention was enforced only by the purge job, every ``purge_interval_s`` (an hour by
default), and never while it fails (a Qdrant server answering 503 to the delete): until then
``memory__recall`` and ``memory://A/TYPE`` returned memories the operator's retention says are
gone, to their agent and to every reader of a shared namespace. Now every read filters on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.context import CallContext
from tests.memory.test_gateway_memory import ALICE, BOB, _config, call, gateway

pytestmark = pytest.mark.anyio


async def test_a_memory_past_its_retention_is_read_by_no_one(tmp_path: Path) -> None:
    # the job would purge only in an hour: reads must not wait for it
    cfg = _config(tmp_path, "knowledge_retention_days = 1\npurge_interval_s = 3600")
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="the door code is 4471")
        await call(
            gw, ALICE, "memory__store", text="the door code is 4471 for all", type="shared", namespace="team"
        )
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        now = m.clock()
        m.clock = lambda: now + 86_400.0 - 60  # a minute inside the retention: still read
        got = await call(gw, BOB, "memory__recall", query="door code", types=["shared"], namespaces=["team"])
        assert got.structured_content is not None and len(got.structured_content["items"]) == 1
        m.clock = lambda: now + 86_400.0 + 60  # a minute past it
        own = await call(gw, ALICE, "memory__recall", query="door code")
        shared = await call(
            gw, BOB, "memory__recall", query="door code", types=["shared"], namespaces=["team"]
        )
        listed = await gw.call(
            CallContext(
                principal=ALICE,
                kind="resources/read",
                target="memory://agent-a/long_term",
                upstream=gw.upstream_info("memory"),
            )
        )
        assert m.store.count({"kind": "memory"}) == 2  # not purged yet
    assert own.structured_content == {"items": []}
    assert shared.structured_content == {"items": []}
    assert json.loads(listed.contents[0].text) == []


async def test_a_retention_of_zero_keeps_memories_readable(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "knowledge_retention_days = 0")
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="the door code is 4471")
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        now = m.clock()
        m.clock = lambda: now + 3650 * 86_400.0
        own = await call(gw, ALICE, "memory__recall", query="door code")
    assert own.structured_content is not None and len(own.structured_content["items"]) == 1


async def test_memories_past_their_retention_do_not_hold_the_quota(tmp_path: Path) -> None:
    """Attack (session 42, mem42b): the quota counted memories past the retention, which no
    read returns: a principal at its limit whose memories had all expired was refused every
    store (until the purge job's next round) while every recall showed it nothing."""
    cfg = _config(
        tmp_path, "knowledge_retention_days = 1\npurge_interval_s = 3600\nmax_memories_per_principal = 2"
    )
    async with gateway(cfg) as gw:
        await call(gw, ALICE, "memory__store", text="the door code is 4471")
        await call(gw, ALICE, "memory__store", text="the lift code is 9920")
        m = gw.builtins["memory"].s.m  # type: ignore[attr-defined]
        now = m.clock()
        m.clock = lambda: now + 86_400.0 + 60  # both past the retention, not purged yet
        r = await call(gw, ALICE, "memory__store", text="the gate code is 1188")
        assert not r.is_error
        got = await call(gw, ALICE, "memory__recall", query="code")
        assert m.store.count({"kind": "memory"}) == 3
    assert got.structured_content is not None
    assert [i["text"] for i in got.structured_content["items"]] == ["the gate code is 1188"]
