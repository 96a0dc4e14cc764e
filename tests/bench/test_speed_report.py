"""bench/_speed_report.stdio_report: the p99 target reads every round's sequential calls pooled.

A round's p99 of 300 calls is its third-slowest call; the median over three rounds then hides
a tail that one round had. The rounds here are built by hand (the report's input), no gateway."""

from __future__ import annotations

from typing import Any

from bench._common import CallStats
from bench._speed_report import stdio_report

QUICK, STALL = 0.001, 0.050  # seconds


def _stats(n: int, stalls: int = 0) -> CallStats:
    latencies = [QUICK] * (n - stalls) + [STALL] * stalls
    return CallStats(latencies=latencies, wall_s=1.0, ok=n)


def _rounds(gateway_stalls: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "stdio": {
                "direct": {"sequential": _stats(300), "concurrent": _stats(100)},
                "gateway_secure": {"sequential": _stats(300, stalls), "concurrent": _stats(50)},
            }
        }
        for stalls in gateway_stalls
    ]


def test_a_tail_in_one_round_is_not_hidden_by_the_median_over_rounds() -> None:
    out = stdio_report(_rounds([10, 0, 0]), ["direct", "gateway_secure"])
    gw = out["gateway_secure"]
    assert gw["sequential_calls_pooled"] == 900
    assert gw["p99_ms"] == QUICK * 1000  # the median of the rounds' p99s: two rounds without a tail
    assert gw["p99_ms_pooled"] == STALL * 1000  # 10 of 900 calls: the pooled p99 is the stall
    assert gw["vs_direct"]["p99_ratio_pooled"] == STALL / QUICK
    assert gw["vs_direct"]["p99_ratio"] == 1.0


def test_no_tail_gives_equal_pooled_and_per_round_ratios() -> None:
    out = stdio_report(_rounds([0, 0, 0]), ["direct", "gateway_secure"])
    vs = out["gateway_secure"]["vs_direct"]
    assert vs["p99_ratio_pooled"] == vs["p99_ratio"] == 1.0
    assert vs["p99_ratio_per_round"] == [1.0, 1.0, 1.0]
