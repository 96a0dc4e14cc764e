"""Gateway events (not tool calls): config load, upstream up/down, drift, policy reload...

Producers call ``sink.emit(...)``; the audit log is the real sink (``gateway.audit``), and a
logging sink stands in where no audit log is configured (tests, ``symbi config check``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

_logger = logging.getLogger("symbi.events")


class EventSink(Protocol):
    def emit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        """Record one event. Must not block the caller for long; must not drop the event."""


class LoggingSink:
    """Writes events to the log only."""

    def emit(
        self,
        event_type: str,
        details: Mapping[str, Any],
        *,
        principal: str | None = None,
        agent: str | None = None,
    ) -> None:
        _logger.info("event %s %s", event_type, dict(details), extra={"fields": {"event": event_type}})
