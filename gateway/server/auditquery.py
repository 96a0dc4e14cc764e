"""The admin API's audit query parameters (``/api/audit/query``, ``/export``, ``/recent``):
validated ``gateway.audit.store.query`` filters, or ``ValueError`` naming the bad parameter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_QUERY_KEYS = {"principal", "tool", "type", "decision", "since_ns", "until_ns", "limit"}


def audit_filters(params: Mapping[str, str], default_limit: int | None) -> dict[str, Any]:
    """Validated ``gateway.audit.store.query`` filters from query parameters (ValueError if bad)."""
    unknown = set(params) - _QUERY_KEYS
    if unknown:
        raise ValueError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {"limit": default_limit}
    for key in ("principal", "tool", "decision"):
        if key in params:
            out[key] = params[key]
    if out.get("decision") not in (None, "allow", "deny"):
        raise ValueError("decision must be allow or deny")
    if "type" in params:
        out["types"] = tuple(t for t in params["type"].split(",") if t)
    for key, (low, high) in _BOUNDS.items():
        if key in params:
            out[key] = _whole(key, params[key], low, high)
    if out["limit"] is not None and not 1 <= out["limit"] <= 100_000:  # a caller's default too
        raise ValueError(_BAD_WHOLE.format(key="limit", low=1, high=100_000))
    return out


# the whole-number parameters of the audit queries: since/until in SQLite's INTEGER range
# (found by schemathesis)
_BOUNDS = {"since_ns": (0, 2**63 - 1), "until_ns": (0, 2**63 - 1), "limit": (1, 100_000)}
_BAD_WHOLE = "{key} must be an integer from {low} to {high}"


def _whole(key: str, raw: str, low: int, high: int) -> int:
    """``raw`` as a whole number from ``low`` to ``high`` (ASCII digits only), or ValueError
    naming the parameter: never int()'s own text (``1e9`` answered ``invalid literal for
    int() with base 10``)."""
    n = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 20 else None  # every bound is >= 0
    if n is None or not low <= n <= high:
        raise ValueError(_BAD_WHOLE.format(key=key, low=low, high=high))
    return n
