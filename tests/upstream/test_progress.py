"""gateway.upstream.progress: what of an upstream's progress reaches the caller."""

from __future__ import annotations

import anyio
import pytest

from gateway.upstream.progress import paced_progress

pytestmark = pytest.mark.anyio


async def test_progress_that_does_not_increase_is_dropped() -> None:
    seen: list[float] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    paced = paced_progress(report)
    for value in (1, 2, 2, 1, 3, 0.5, 4):
        await paced(value, None, None)
    assert seen == [1, 2, 3, 4]


async def test_a_burst_passes_and_the_rest_waits_for_the_rate() -> None:
    seen: list[float] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    paced = paced_progress(report, burst=3, rate=20)
    for value in range(1, 11):  # ten at once: the burst of three
        await paced(value, 10, None)
    assert seen == [1, 2, 3]
    await anyio.sleep(0.2)  # four tokens back at 20 a second (a lower bound: never fewer)
    await paced(11, 10, "later")
    assert seen[-1] == 11
