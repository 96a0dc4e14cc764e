"""What one agent or principal may hold on the bus, past the per-inbox buffers.

* Subscriptions per agent (``bus.max_subscriptions_per_agent``): every publish and every
  receipt of a topic message reads and matches all of them.
* Bytes a principal's agents put on the bus within ``bus.max_age_s``
  (``bus.max_bytes_per_principal``): a message is stored until it expires, and in the
  embedded store a settled one is kept as long again for ``symbi bus verify``, so the buffers
  (which bound what waits unread) never bounded the disk: a principal sending to its own agent
  and receiving filled the data dir, where the audit log lives, at its rate limit. A topic
  message counts once for its publisher and each stored copy against its subscriber's
  principal (``topics-to <principal>``): a subscriber of many agents drains its own budget,
  never the publisher's. Counted in one-minute buckets: here per process (the embedded
  backend), in Redis across processes (``gateway.bus.redis_counts``).
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.errors import BusQuotaExceeded

MINUTE_MS = 60_000


def check_subscriptions(agent: str, held: set[str], pattern: str, limit: int) -> None:
    """Refuse a new subscription past ``limit`` (one already held is not a new one)."""
    if pattern not in held and len(held) >= limit:
        raise subscriptions_refused(agent, len(held))


def subscriptions_refused(agent: str, held: int) -> BusQuotaExceeded:
    reason = f"agent {agent} holds {held} subscriptions (bus.max_subscriptions_per_agent)"
    return BusQuotaExceeded(f"{reason}: unsubscribe from one first", reasons=[reason])


def volume_refused(who: str, held: int, size: int, limit: int) -> BusQuotaExceeded:
    reason = (
        f"principal {who} put {held} bytes on the bus within bus.max_age_s; {size} more "
        f"would pass bus.max_bytes_per_principal ({limit})"
    )
    return BusQuotaExceeded(reason, reasons=[reason])


class SentVolume:
    def __init__(self, limit: int, window_ms: int) -> None:
        self.limit = limit
        self.window_ms = window_ms
        self._buckets: dict[str, OrderedDict[int, int]] = {}  # principal -> minute -> bytes
        self._total: dict[str, int] = {}

    def _prune(self, who: str, now_ms: int) -> None:
        buckets = self._buckets.get(who)
        oldest = (now_ms - self.window_ms) // MINUTE_MS  # a bucket is kept up to a minute longer
        while buckets and next(iter(buckets)) < oldest:
            self._total[who] -= buckets.popitem(last=False)[1]
        if buckets is not None and not buckets:
            del self._buckets[who], self._total[who]

    def check(self, who: str, size: int, now_ms: int) -> None:
        self._prune(who, now_ms)
        held = self._total.get(who, 0)
        if held + size > self.limit:
            raise volume_refused(who, held, size, self.limit)

    def add(self, who: str, size: int, now_ms: int) -> None:
        buckets = self._buckets.setdefault(who, OrderedDict())
        minute = now_ms // MINUTE_MS
        buckets[minute] = buckets.get(minute, 0) + size
        self._total[who] = self._total.get(who, 0) + size

    def sweep(self, now_ms: int) -> None:
        for who in list(self._buckets):
            self._prune(who, now_ms)

    def __len__(self) -> int:
        return len(self._buckets)
