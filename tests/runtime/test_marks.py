"""A terminate order's mark on Redis's clock (``gateway.runtime.marks``): pure arithmetic on two
clock readings, no Redis needed."""

from __future__ import annotations

from gateway.runtime.marks import Mark, dated, on_clock, voids


def test_a_dated_mark_stays_at_the_orders_time_through_a_faster_reading() -> None:
    """Dated through one reading (Redis 1000.0 at monotonic 50.0) and read back through a later,
    faster one (its round trip 0.2 s shorter: Redis 1010.0 at 60.2), a terminate order's mark
    went 0.2 s earlier than the order: a start asked in between was not withdrawn. Kept on
    Redis's clock, it stays at the order's time."""
    slow, fast = (1000.0, 50.0), (1010.0, 60.2)
    mark = Mark(mono=55.0)  # carried out at 1005 by the first reading
    dated(mark, 1002.0, slow, None)  # the order, asked at 1002
    assert on_clock(fast, mark) == 1002.0
    assert voids(mark, fast, 1001.9)  # a start asked just before the order: withdrawn


def test_a_dated_mark_is_never_later_than_it_was_nor_earlier_than_the_one_it_replaced() -> None:
    clock = (1000.0, 50.0)
    ahead = Mark(mono=55.0)
    dated(ahead, 1009.0, clock, None)  # an order stamped ahead of when it was carried out
    assert on_clock(clock, ahead) == 1005.0
    before = Mark(mono=54.0)  # a terminate made here at 1004, replaced by the order's mark
    later = Mark(mono=55.0)
    dated(later, 1002.0, clock, before)
    assert on_clock(clock, later) == 1004.0
    kept = Mark(mono=55.0)
    dated(kept, 1002.0, None, before)  # no reading to place ``before``: kept as made (now)
    assert kept.at is None
