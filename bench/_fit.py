"""A least-squares line through measurements against a size (bench/growth.py): slope,
intercept, the log-log exponent, the marginal cost per step, and whether it grows linearly."""

from __future__ import annotations

import math
from typing import Any

EXPONENT_LINEAR = 1.15  # fitted exponents up to this count as linear (noise on a shared machine)


def _lsq(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return b, my - b * mx


def fit(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Slope and intercept, the log-log exponent, the marginal cost per step, and a verdict."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and not math.isnan(y)]
    if len(pts) < 2:
        return {"verdict": "not enough points"}
    px, py = [p[0] for p in pts], [p[1] for p in pts]
    slope, intercept = _lsq(px, py)
    logs = [(math.log(x), math.log(y)) for x, y in pts if x > 0 and y > 0]
    exponent = _lsq([p[0] for p in logs], [p[1] for p in logs])[0] if len(logs) >= 2 else float("nan")
    marginal = [
        round((py[i + 1] - py[i]) / (px[i + 1] - px[i]), 4) for i in range(len(px) - 1) if px[i + 1] != px[i]
    ]
    return {
        "slope": round(slope, 4),
        "intercept": round(intercept, 3),
        "exponent": round(exponent, 3),
        "marginal_per_unit": marginal,
        "verdict": _verdict(exponent),
    }


def _verdict(exponent: float) -> str:
    # A measurement at or below zero (RSS over a baseline that noise put above it) has no
    # logarithm: the exponent says nothing, and nan compares false with everything.
    if math.isnan(exponent):
        return "no exponent (fewer than two positive points)"
    return "linear or better" if exponent <= EXPONENT_LINEAR else "worse than linear"
