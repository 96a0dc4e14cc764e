"""The error handler's circuit breakers (one per upstream) and its retry rule.

closed --(``runtime.breaker.failures`` consecutive failures)--> open
open   --(``runtime.breaker.reset_s`` later, the next call is the probe)--> half-open
half-open --probe succeeds--> closed        half-open --probe fails--> open again
half-open --probe ends otherwise (cancelled, its budget spent, a gateway error)--> half-open,
          the next call the probe (``abandon``: a probe left out forever refused every call)

While open (or while the half-open probe is out) calls fail at once with
``UpstreamUnavailable`` instead of waiting on a dead server. A failure is the upstream
failing (``UpstreamError``: down, disconnected, timed out), not a tool's own ``isError``.

Retry (``runtime.retry``) is only for tools whose annotations say a repeat is harmless
(``readOnlyHint`` or ``idempotentHint``), and only for upstream failures, with exponential
backoff; a breaker that opens stops the retries.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.errors import UpstreamUnavailable
from gateway.events import Event, EventSink

BreakerState = Literal["closed", "open", "half-open"]
STATE_VALUE = {"closed": 0, "half-open": 1, "open": 2}


@dataclass(slots=True)
class Breaker:
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    trips: int = 0


class Breakers:
    def __init__(self, threshold: int, reset_s: float, events: EventSink) -> None:
        self.threshold = threshold
        self.reset_s = reset_s
        self.events = events
        self._by_upstream: dict[str, Breaker] = {}

    def get(self, upstream: str) -> Breaker:
        b = self._by_upstream.get(upstream)
        if b is None:
            b = self._by_upstream[upstream] = Breaker()
        return b

    def states(self) -> dict[str, BreakerState]:
        return {name: b.state for name, b in self._by_upstream.items()}

    def before(self, upstream: str) -> bool:
        """May a call go to ``upstream`` now? Raises when open; True when it is the probe."""
        b = self.get(upstream)
        if b.state == "closed":
            return False
        if b.state == "open" and time.monotonic() - b.opened_at >= self.reset_s:
            self._move(upstream, b, "half-open")
        if b.state == "half-open" and not b.probing:
            b.probing = True
            return True
        wait = max(self.reset_s - (time.monotonic() - b.opened_at), 0.0)
        raise UpstreamUnavailable(
            f"upstream {upstream!r} is unavailable (circuit breaker {b.state})",
            reasons=[f"{b.failures} consecutive failures; next probe in {wait:.1f} s (runtime.breaker)"],
        )

    def success(self, upstream: str) -> None:
        b = self.get(upstream)
        b.failures = 0
        b.probing = False
        if b.state != "closed":
            self._move(upstream, b, "closed")

    def abandon(self, upstream: str) -> None:
        """The probe ended saying nothing of the upstream: the next call is the probe."""
        self.get(upstream).probing = False

    def failure(self, upstream: str) -> None:
        b = self.get(upstream)
        b.failures += 1
        b.probing = False
        if b.state == "half-open" or (b.state == "closed" and b.failures >= self.threshold):
            b.opened_at = time.monotonic()
            b.trips += 1
            self._move(upstream, b, "open")

    def _move(self, upstream: str, b: Breaker, to: BreakerState) -> None:
        # the state first: a record a broken log refuses (AuditError) fails the call whose
        # path this is (the schedule step, inside the audit step), never a background task
        src, b.state = b.state, to
        self.events.emit(
            Event.UPSTREAM_BREAKER, {"upstream": upstream, "from": src, "to": to, "failures": b.failures}
        )


def retryable(annotations: Mapping[str, Any]) -> bool:
    """Only a tool that says a repeat is harmless is retried."""
    return annotations.get("readOnlyHint") is True or annotations.get("idempotentHint") is True
