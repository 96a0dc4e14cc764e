"""An operator's start request or terminate made in this process, for a hosted agent under shared
state (``gateway.runtime.leased``), and when it was made on Redis's clock: the clock every
replica's starts and withdrawals are stamped with (``gateway.state.leases``), so which came first
is told on one clock, not on the replicas' own.

A mark holds the monotonic instant it was made; it is put on Redis's clock when used, by the last
reading of that clock (``Clock``: Redis's time and the monotonic instant it was asked at), so a
mark made before the clock was read gets its time once it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

Clock = tuple[float, float]  # Redis's clock (epoch s), and the monotonic instant it was asked at


@dataclass(eq=False)
class Mark:
    """A start request or a withdrawal made here, and when (monotonic). Told apart by identity:
    two made before the clock was read are two marks (by their time, None, they were one: a
    terminate's kept mark was never dropped). ``at``: a time on Redis's clock it is put at, no
    later (a terminate order's: ``dated``), kept as Redis's, not moved through a reading."""

    mono: float = field(default_factory=time.monotonic)
    at: float | None = None


def on_clock(clock: Clock, mark: Mark) -> float:
    """When ``mark`` was made on Redis's clock, by the reading ``clock`` (taken before the TIME
    it sent: the estimate errs later, so a withdrawal errs on deleting); no later than its ``at``."""
    at, mono = clock
    estimate = at + (mark.mono - mono)
    return estimate if mark.at is None else min(mark.at, estimate)


def voids(mark: Mark | None, clock: Clock | None, asked: float) -> bool:
    """Whether a start a renewal took, asked at ``asked`` on Redis's clock (0.0: not stamped), is
    withdrawn by the terminate ``mark`` still kept here (None: none). Only a start asked by the
    terminate's time is: any start taken while a mark was kept was dropped, one asked after the
    terminate too (a new request lost after its 202). No reading of the clock: any start."""
    if mark is None:
        return False
    return clock is None or asked <= on_clock(clock, mark)


def dated(mark: Mark, at: float, clock: Clock | None, before: Mark | None) -> None:
    """``mark``, made here carrying out a terminate order asked at ``at`` (Redis's clock), put at
    the order's time rather than now: a start asked after the order and before it was carried out
    is the operator's later word (it was dropped). Never later than it was (an order stamped
    ahead), nor earlier than ``before``, the mark it replaced (a later terminate's time covers an
    earlier one's). Kept on Redis's clock: put through one reading and back through another, a
    faster one, it went earlier than the order. No reading of the clock to place ``before``:
    kept as now (fails closed)."""
    if before is not None:
        if clock is None:
            return
        at = max(at, on_clock(clock, before))
    mark.at = at
