"""Attack (session 42's leftover, closed in session 43): a ``memory__recall`` answer larger
than the policy's ``max_result_bytes`` was cut by the call chain in the middle of an item: the
agent got a JSON text that does not parse, and no word of what was missing. Now whole items
are left out and the answer says how many (``left_out``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import types

from gateway.policy.results import result_size
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway

pytestmark = pytest.mark.anyio


def _text(r: types.CallToolResult) -> str:
    block = r.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


CAP = 1_048_576  # tests/assets/policy/test-data.json: max_result_bytes "*"
N = 40


async def test_a_recall_past_the_cap_leaves_out_whole_items_and_says_how_many(tmp_path: Path) -> None:
    async with gateway(_config(tmp_path)) as gw:
        for i in range(N):  # 40 of 30,000 characters: 2.4 MB as text and structured content
            text = f"note {i}: the printer on floor {i} " + "toner and paper " * 1870
            r = await call(gw, ALICE, "memory__store", text=text, type="long_term")
            assert not r.is_error
        got = await call(
            gw, ALICE, "memory__recall", query="printer floor toner", types=["long_term"], top_k=N
        )
    assert not got.is_error and result_size(got) <= CAP
    items = json.loads(_text(got))  # whole items: the text parses
    assert got.structured_content is not None
    assert got.structured_content["items"] == items and 0 < len(items) < N
    assert got.structured_content["left_out"] == N - len(items)


async def test_a_recall_within_the_cap_is_whole(tmp_path: Path) -> None:
    async with gateway(_config(tmp_path)) as gw:
        await call(gw, ALICE, "memory__store", text="the printer is on floor 3", type="long_term")
        got = await call(gw, ALICE, "memory__recall", query="printer", types=["long_term"])
    assert got.structured_content == {"items": json.loads(_text(got))}
    assert len(got.content) == 1 and len(got.structured_content["items"]) == 1
