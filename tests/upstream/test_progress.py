"""gateway.upstream.progress: what of an upstream's progress reaches the caller."""

from __future__ import annotations

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


class Clock:
    """The pacing's clock, moved by the test: real time let a fourth token back whenever ten
    calls took over 50 ms (a loaded machine), and a sleep is only a lower bound."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_burst_passes_and_the_rest_waits_for_the_rate() -> None:
    seen: list[float] = []

    async def report(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    clock = Clock()
    paced = paced_progress(report, burst=3, rate=20, clock=clock)
    for value in range(1, 11):  # ten at once: the burst of three
        await paced(value, 10, None)
    assert seen == [1, 2, 3]
    clock.now += 0.049  # not yet a whole token back at 20 a second
    await paced(11, 10, None)
    assert seen == [1, 2, 3]
    clock.now += 0.2  # over four tokens back, the burst holds three
    for value in range(12, 17):
        await paced(value, 10, "later")
    assert seen == [1, 2, 3, 12, 13, 14]
