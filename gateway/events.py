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


# The agent bus (gateway/bus): details are message metadata (id, sender, recipient or topic,
# kind, timestamps, ciphertext size), never a body.
BUS_EVENTS: Mapping[str, str] = {
    "bus.send": "a direct message, request or reply was accepted into the recipient's inbox",
    "bus.publish": "a topic message was accepted (subscriber count, refused subscribers)",
    "bus.subscribe": "an agent subscribed to a topic pattern",
    "bus.unsubscribe": "an agent removed a subscription",
    "bus.denied": "the policy (or the per-agent rate) refused a bus/send, bus/publish or bus/subscribe",
    "bus.delivery_failed": "a message was not accepted (inbox full, backend unreachable)",
    "bus.rejected": "a stored message failed a receive check (signature, recipient, time, replay, decryption)",
    "bus.expired": "messages passed their ttl and were removed unread",
    "bus.request_timeout": "a request got no reply within its timeout",
    "bus.reply_late": "a reply arrived for a request no longer waiting",
}

# What the gateway relays or translates between a client and an upstream (issue 20): never
# contents, only kinds, targets and who was told.
RELAY_EVENTS: Mapping[str, str] = {
    "notify.list_changed": "a catalogue change was announced (kinds, how many principals were told, how many not)",
    "notify.resource_updated": "an upstream's notifications/resources/updated was passed to the principals who may read it",
    "bridge.input_request": "an upstream's input request was put to the calling client in the other protocol era",
}
