"""Waiting on real ``symbi serve`` replicas and reading their admin API, for the tests that
drive hosted agents across replicas (test_orders_serve.py, test_runkeys_serve.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

BOUND_S = 60.0  # the bound of each wait (a bwrap start, a renewal, a lease expiry), not a timing assertion


def admin_get(base: str, key: str, path: str) -> Any:
    """``GET /api<path>`` with an API key: the JSON answer (an error status raises)."""
    r = httpx.get(base + "/api" + path, headers={"x-api-key": key}, timeout=10)
    r.raise_for_status()
    return r.json()


def wait_until(what: str, check: Callable[[], Any]) -> Any:
    """``check()``'s first true answer, asked every 0.3 s; fails naming ``what`` past ``BOUND_S``."""
    deadline = time.monotonic() + BOUND_S
    while not (got := check()):
        assert time.monotonic() < deadline, f"not within {BOUND_S:g} s: {what}"
        time.sleep(0.3)
    return got
