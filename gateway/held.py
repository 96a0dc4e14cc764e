"""One record ``events.Unsent`` holds until the audit log commits it, and the trace a log
line keeps of a record never written (moved out of ``gateway.events``, at its size bound)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.events import Event


class Held:
    __slots__ = ("agent", "commit", "details", "kind", "late", "principal", "since_ns")

    def __init__(self, kind: Event, details: Mapping[str, Any], since_ns: int | None = None) -> None:
        self.kind, self.details = kind, details
        self.since_ns = time.time_ns() if since_ns is None else since_ns  # when it was acted on
        # who acted (an operator's action: the principal column of its record)
        self.principal: str | None = None
        self.agent: str | None = None
        self.late = False  # refused once: stamped with since_ns when it is sent
        self.commit: asyncio.Future[int] | None = None  # queued in the log, not committed yet

    def sent_details(self) -> Mapping[str, Any]:
        # a record sent after later ones were recorded directly says when the change was made
        return {**self.details, "held_since_ns": self.since_ns} if self.late else self.details

    def trace(self) -> dict[str, Any]:
        """What a log line keeps of a record never written: its details and who acted (an
        approval's details name no approver: the principal column does)."""
        return traced(self.sent_details(), principal=self.principal, agent=self.agent)


def traced(details: Mapping[str, Any], **who: str | None) -> dict[str, Any]:
    acted = {k: v for k, v in who.items() if v is not None}  # (beside: a suspension's target is "principal")
    return {**details, "recorded_as": acted} if acted else dict(details)
