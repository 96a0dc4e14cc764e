"""The one 503 body of the admin API and the operator's actions: what is unavailable
(``component``), why, and the error's ``code`` from the one catalogue (``gateway.errors``)."""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError


def unavailable(component: str, why: GatewayError | str) -> dict[str, Any]:
    """``why``: the error (its code and message), or a plain reason for a component the config
    turned off (no code: nothing failed, there is none to wait for)."""
    if isinstance(why, str):
        return {"error": "unavailable", "component": component, "reason": why}
    return {"error": "unavailable", "component": component, "code": why.code, "reason": why.message}
