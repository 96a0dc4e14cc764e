"""The circuit breakers' states, events and refusals in-process (tests/runtime/test_breaker.py
drives them through a gateway subprocess, which mutation testing cannot attribute).

Time is not waited for: a test places ``opened_at`` in the past (test set-up), as the
monotonic clock would after ``reset_s``.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.errors import UpstreamUnavailable
from gateway.runtime.breaker import Breakers, retryable


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details)))


def test_consecutive_failures_open_the_breaker_and_an_open_one_refuses_at_once() -> None:
    rec = Recorder()
    b = Breakers(3, 600.0, rec)
    assert b.before("up") is False  # closed: not a probe
    b.failure("up")
    b.failure("up")
    b.success("up")  # a success in between: the count starts over
    assert b.get("up").failures == 0 and rec.events == []  # closed stays closed: no event
    for _ in range(2):
        b.failure("up")
    assert b.states() == {"up": "closed"}
    b.failure("up")
    assert b.states() == {"up": "open"} and b.get("up").trips == 1
    assert rec.events == [
        ("upstream.breaker", {"upstream": "up", "from": "closed", "to": "open", "failures": 3})
    ]
    with pytest.raises(UpstreamUnavailable) as err:
        b.before("up")
    assert len(err.value.reasons) == 1 and "3 consecutive failures" in err.value.reasons[0]
    assert b.before("other") is False  # one breaker per upstream


def test_after_reset_one_probe_goes_and_its_outcome_closes_or_reopens() -> None:
    rec = Recorder()
    b = Breakers(1, 600.0, rec)
    b.failure("up")
    b.get("up").opened_at = time.monotonic() - 600.0  # test set-up: reset_s has passed
    assert b.before("up") is True  # the probe
    assert b.states() == {"up": "half-open"}
    with pytest.raises(UpstreamUnavailable):
        b.before("up")  # while the probe is out, the others are refused
    b.failure("up")  # the probe failed: open again, a new trip
    assert b.states() == {"up": "open"} and b.get("up").trips == 2 and not b.get("up").probing
    b.get("up").opened_at = time.monotonic() - 600.0
    assert b.before("up") is True
    b.success("up")
    assert b.states() == {"up": "closed"} and b.get("up").failures == 0 and not b.get("up").probing
    moves = [(d["from"], d["to"]) for _, d in rec.events]
    assert moves == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]
    assert all(d["upstream"] == "up" for _, d in rec.events)


def test_an_abandoned_probe_makes_the_next_call_the_probe_without_a_verdict() -> None:
    rec = Recorder()
    b = Breakers(1, 600.0, rec)
    b.failure("up")
    b.get("up").opened_at = time.monotonic() - 600.0  # test set-up: reset_s has passed
    assert b.before("up") is True
    b.abandon("up")  # the probe was cancelled: nothing learnt about the upstream
    assert b.states() == {"up": "half-open"} and b.get("up").trips == 1
    assert b.before("up") is True  # the next call probes
    with pytest.raises(UpstreamUnavailable):
        b.before("up")  # and only one at a time
    assert [(d["from"], d["to"]) for _, d in rec.events] == [("closed", "open"), ("open", "half-open")]


def test_an_open_breaker_before_its_reset_stays_open() -> None:
    b = Breakers(1, 600.0, Recorder())
    b.failure("up")
    b.get("up").opened_at = time.monotonic() - 599.0  # not yet
    with pytest.raises(UpstreamUnavailable):
        b.before("up")
    assert b.states() == {"up": "open"}


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({"readOnlyHint": True}, True),
        ({"idempotentHint": True}, True),
        ({"readOnlyHint": True, "destructiveHint": True}, True),
        ({}, False),
        ({"readOnlyHint": False, "idempotentHint": False}, False),
        ({"readOnlyHint": "true"}, False),  # only a real true says a repeat is harmless
        ({"idempotentHint": 1}, False),
    ],
)
def test_only_a_tool_that_says_a_repeat_is_harmless_is_retryable(
    annotations: dict[str, Any], expected: bool
) -> None:
    assert retryable(annotations) is expected
