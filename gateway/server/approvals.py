"""Drift review and approval from the admin API and the dashboard.

Reads the verifier's tool state (``gw.verifier.state``, a ``ToolStateStore``) and approves
the *current* definition of a tool, as ``symbi tools approve`` does for an upstream without
a signed manifest. An upstream with a signed manifest (``servers.X.approved``) is refused:
approving there means signing with the organisation key, which never lives on the server,
so it stays a CLI step.
"""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING, Any

import anyio

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.context import Principal


class ApprovalError(GatewayError):
    """The approval cannot be made here; ``status`` is the HTTP status to answer with."""

    code = "approval_refused"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _state(gw: Gateway | None) -> Any:
    state = getattr(getattr(gw, "verifier", None), "state", None)
    if state is None:
        raise ApprovalError("tool verification is not enabled in this gateway", 503)
    return state


def _record(gw: Gateway | None, name: str) -> Any:
    rec = _state(gw).find(name)
    if rec is None:
        raise ApprovalError(f"no tool named {name!r} has been seen", 404)
    return rec


def _pretty(d: Any) -> list[str]:
    return json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False).splitlines(keepends=True)


def tool_diff(gw: Gateway | None, name: str) -> dict[str, Any]:
    """The approved definition against the current one, as a unified diff."""
    rec = _record(gw, name)
    diff = ""
    if rec.drifted:
        diff = "".join(
            difflib.unified_diff(
                _pretty(rec.approved_definition),
                _pretty(rec.current_definition),
                fromfile=f"{rec.namespaced} (approved {str(rec.approved_hash)[:12]})",
                tofile=f"{rec.namespaced} (current {str(rec.current_hash)[:12]})",
            )
        )
    return {
        "tool": rec.namespaced,
        "status": rec.status,
        "drifted": rec.drifted,
        "approved_hash": rec.approved_hash,
        "current_hash": rec.current_hash,
        "diff": diff,
    }


async def approve_tool(gw: Gateway | None, name: str, principal: Principal) -> dict[str, Any]:
    """Approve the current definition of ``name``; the catalogue is re-verified at once."""
    from schemapin import definition_hash

    rec = _record(gw, name)
    assert gw is not None
    srv = gw.config.servers.get(rec.upstream)
    if srv is None:
        raise ApprovalError(f"upstream {rec.upstream!r} is not in the config", 409)
    if srv.approved is not None:
        raise ApprovalError(
            f"servers.{rec.upstream}.approved is a signed manifest: approve with "
            "`symbi tools approve --key ORG_PRIV.pem` (the organisation key is not on this server)",
            409,
        )
    if rec.current_definition is None:
        raise ApprovalError(f"{name} has no current definition to approve", 409)
    h = definition_hash(rec.current_definition)
    await anyio.to_thread.run_sync(_approve_sync, gw, rec, h, principal.id, srv.domain)
    gw.events.emit(
        "tool.approved",
        {"tool": rec.namespaced, "upstream": rec.upstream, "definition_hash": h, "via": "admin-api"},
        principal=principal.id,
    )
    await gw.refresh()
    return {"tool": rec.namespaced, "approved_hash": h}


def _approve_sync(gw: Gateway, rec: Any, h: str, actor: str, domain: str | None) -> None:
    _state(gw).approve(rec.upstream, rec.name, h, rec.current_definition)
    if domain:
        # a pending key/definition change on a SchemaPin pin is accepted too (as the CLI does)
        from schemapin import PinStore, PinStoreError

        with PinStore(gw.config.pins_path) as pins:
            pin = pins.get(domain, rec.name)
            if pin is not None and (pin.pending_fingerprint or pin.pending_definition_hash):
                try:
                    pins.approve(domain, rec.name, actor=actor)
                except PinStoreError:
                    pass
