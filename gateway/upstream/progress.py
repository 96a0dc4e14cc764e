"""An upstream's progress notifications on their way to the caller: increasing, and paced.

The gateway relayed every ``notifications/progress`` of a call as it came: an upstream sending
100,000 of them in one call's stream had the gateway write 100,000 notifications to the caller
(some 34 s of its work, for a few megabytes of the upstream's). MCP says a request's progress
MUST increase with each notification: one that does not is dropped. The rest pass through a
token bucket per call: bursts of ``BURST`` and ``RATE`` a second after that (a server reporting
every 0.1 s is never held back; progress is advisory, the result ends the call either way).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from mcp.shared.dispatcher import ProgressFnT

BURST = 20
RATE = 20.0  # notifications a second, after a burst


def paced_progress(
    report: ProgressFnT,
    *,
    burst: int = BURST,
    rate: float = RATE,
    clock: Callable[[], float] = anyio.current_time,  # a seam: the tests' own clock
) -> ProgressFnT:
    """``report`` as one call's progress callback: a notification whose progress does not
    increase is dropped, and so is one past the call's budget (``burst``, refilled at ``rate``)."""
    last: float | None = None
    tokens = float(burst)
    refilled = clock()

    async def paced(progress: float, total: float | None, message: str | None) -> None:
        nonlocal last, tokens, refilled
        if last is not None and progress <= last:
            return
        now = clock()
        tokens = min(float(burst), tokens + (now - refilled) * rate)
        refilled = now
        if tokens < 1:
            return
        tokens -= 1
        last = progress
        await report(progress, total, message)

    return paced
