"""``gateway.deadlines.EarliestTimer``: one loop timer for many deadlines (real event loop)."""

from __future__ import annotations

import asyncio
import math

import pytest

from gateway.deadlines import EarliestTimer

pytestmark = pytest.mark.anyio


async def test_fires_at_the_earliest_deadline_and_rearms_for_the_next() -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()
    deadlines = {"a": now + 0.15, "b": now + 0.05, "c": now + 0.10}
    ended: list[tuple[str, float]] = []

    def expire(due: float) -> float:
        for name, at in list(deadlines.items()):
            if at <= due:
                ended.append((name, loop.time()))
                del deadlines[name]
        return min(deadlines.values(), default=math.inf)

    timer = EarliestTimer(expire)
    for at in (now + 0.15, now + 0.05, now + 0.10):  # a later deadline never delays an earlier one
        timer.include(loop, at)
    await asyncio.sleep(0.4)
    assert [name for name, _ in ended] == ["b", "c", "a"]
    for (name, at), start in zip(ended, (0.05, 0.10, 0.15), strict=True):
        assert at >= now + start - 0.002, name  # not before its deadline (clock resolution aside)


async def test_cancel_stops_it_and_an_empty_expiry_does_not_rearm() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []

    def expire(due: float) -> float:
        fired.append(due)
        return math.inf

    timer = EarliestTimer(expire)
    timer.include(loop, loop.time() + 0.05)
    timer.cancel()
    await asyncio.sleep(0.15)
    assert fired == []
    timer.include(loop, loop.time() + 0.02)  # usable again after a cancel
    await asyncio.sleep(0.15)
    assert len(fired) == 1
