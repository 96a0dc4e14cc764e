"""The bus's quotas: subscriptions per agent, bytes per principal within the window."""

from __future__ import annotations

import pytest

from gateway.bus.quotas import MINUTE_MS, SentVolume, check_subscriptions
from gateway.errors import BusQuotaExceeded


def test_bytes_count_within_the_window_and_leave_with_it() -> None:
    v = SentVolume(1000, window_ms=10 * MINUTE_MS)
    t0 = 100 * MINUTE_MS
    v.add("key:a", 600, t0)
    v.check("key:a", 400, t0 + 1)  # exactly the limit: allowed
    with pytest.raises(BusQuotaExceeded):
        v.check("key:a", 401, t0 + 1)
    v.check("key:b", 1000, t0 + 1)  # another principal has its own
    v.add("key:a", 400, t0 + 5 * MINUTE_MS)
    with pytest.raises(BusQuotaExceeded):
        v.check("key:a", 1, t0 + 10 * MINUTE_MS)  # the first bucket is kept up to a minute longer
    v.check("key:a", 600, t0 + 12 * MINUTE_MS)  # the first 600 left the window
    v.sweep(t0 + 30 * MINUTE_MS)
    assert len(v) == 0  # nothing kept for principals that stopped sending


def test_a_held_subscription_is_not_a_new_one() -> None:
    check_subscriptions("ag", {"a", "b"}, "a", 2)
    with pytest.raises(BusQuotaExceeded):
        check_subscriptions("ag", {"a", "b"}, "c", 2)
