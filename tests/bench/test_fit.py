"""bench/_fit.py: the growth verdicts bench/growth.py reports."""

from __future__ import annotations

from bench._fit import fit


def test_linear_and_faster_growth_are_told_apart() -> None:
    assert fit([5, 10, 25, 50], [5.0, 10.0, 25.0, 50.0])["verdict"] == "linear or better"
    assert fit([5, 10, 25, 50], [1.0, 1.1, 1.2, 1.3])["verdict"] == "linear or better"
    assert fit([5, 10, 25, 50], [25.0, 100.0, 625.0, 2500.0])["verdict"] == "worse than linear"


def test_points_at_or_below_zero_give_no_exponent_rather_than_a_verdict() -> None:
    # RSS over the empty gateway's: at a small step the noise can put it below zero
    out = fit([20, 40], [-1.0, 3.0])
    assert out["verdict"].startswith("no exponent")
    assert out["slope"] == 0.2


def test_fewer_than_two_points_are_not_fitted() -> None:
    assert fit([5], [1.0]) == {"verdict": "not enough points"}
