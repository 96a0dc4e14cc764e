"""The warm pool's refill back-off: doubling, capped, and still a number after a tier has been
unusable for days (every failed probe counts now; 2.0**1024 raised and ended the refill thread)."""

from __future__ import annotations

from gateway.sandbox.pool import backoff_s


def test_the_back_off_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_tier_unusable_for_days_still_gets_a_wait() -> None:
    # ~8.5 h of 30 s waits is past 1,024 failures; a week is ~20,000
    assert backoff_s(1024) == backoff_s(20_000) == 30.0
