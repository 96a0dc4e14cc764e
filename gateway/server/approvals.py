"""Drift review and approval from the admin API and the dashboard.

Reads the verifier's tool state (``gw.verifier.state``, a ``ToolStateStore``) and approves
the definition of a tool the person reviewed (the diff's ``current_hash``, sent back as
``hash``; refused when the current one differs), as ``symbi tools approve --hash`` does for an
upstream without a signed manifest. An upstream with a signed manifest (``servers.X.approved``) is refused:
approving there means signing with the organisation key, which never lives on the server,
so it stays a CLI step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from gateway.errors import ApprovalError, NotStarted, ScreeningFlagged
from gateway.events import Event
from gateway.server.operations import unrecordable
from gateway.server.oprecord import record_action, with_record
from gateway.verify.approve import (
    approve_current,
    check_reviewed,
    check_screening,
    drift_diff,
    pin_review,
    screen_record,
    unsigned_under_strict,
)

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.context import Principal

# after the record's wait (``oprecord.RECORD_WAIT_S``, 30 s): within the CLI's 45 s with room
REFRESH_WAIT_S = 5.0


def _running(gw: Gateway | None) -> Gateway:
    """The gateway, or ``NotStarted`` (503 ``gateway_not_started``): before it is assembled an
    approval is answered as every admin endpoint is, to be tried again."""
    if gw is None:
        raise NotStarted()
    return gw


def _state(gw: Gateway | None) -> Any:
    return _running(gw).verifier.state


def _record(gw: Gateway | None, name: str) -> Any:
    rec = _state(gw).find(name)
    if rec is None:
        raise ApprovalError(f"no tool named {name!r} has been seen", 404)
    return rec


def tool_diff(gw: Gateway | None, name: str) -> dict[str, Any]:
    """The approved definition against the current one, as a unified diff."""
    rec = _record(gw, name)
    diff = drift_diff(rec)
    gw = _running(gw)
    srv = gw.config.servers.get(rec.upstream)
    review = pin_review(gw.verifier.pins, rec, srv.domain if srv else None)
    keys = review.key_change
    return {
        "tool": rec.namespaced,
        "status": rec.status,
        "drifted": rec.drifted,
        "approved_hash": rec.approved_hash,
        "current_hash": rec.current_hash,
        "diff": diff,
        # approving it moves the SchemaPin pin to another key (a rotation): reviewed with it
        "key_change": None if keys is None else {"pinned": keys[0], "current": keys[1]},
        # the pin change it would make was rejected (pins reject): approving it is refused
        "pin_change_rejected": review.rejected,
        # screened again as a person reviews it: what the definition says to the model
        "screening": [f.as_dict() for f in screen_record(_state(gw), rec).findings],
    }


async def approve_tool(
    gw: Gateway | None, name: str, principal: Principal, reviewed: str | None
) -> tuple[int, dict[str, Any]]:
    """Approve the definition of ``name`` the person reviewed (``reviewed``: its hash) if it is
    still the current one; the catalogue is re-verified at once, waited for ``REFRESH_WAIT_S``
    (``catalogue_refreshed`` false: still being rebuilt, in force shortly). (200, what was approved), 503
    ``audit_unavailable`` when the log cannot record it (nothing approved), or 503
    ``action_unrecorded`` when it was approved but its record is not committed (held,
    pending or restart_needed: ``oprecord``). The tool state is read and written in a worker thread (PostgreSQL with [state])."""
    gw = _running(gw)
    rec = await anyio.to_thread.run_sync(_record, gw, name)
    # refused before anything is saved (503 audit_unavailable, as every operator action): an
    # approval nobody could tell was made
    if (refused := unrecordable(gw.audit, "tool approval")) is not None:
        return refused
    srv = gw.config.servers.get(rec.upstream)
    if srv is None:
        raise ApprovalError(f"upstream {rec.upstream!r} is not in the config", 409)
    if srv.approved is not None:
        raise ApprovalError(
            f"servers.{rec.upstream}.approved is a signed manifest: approve with "
            "`symbi tools approve --key ORG_PRIV.pem` (the organisation key is not on this server)",
            409,
        )
    why = unsigned_under_strict(gw.config.verification_for(rec.upstream), False, rec)
    if why:
        raise ApprovalError(why, 409)
    check_reviewed(rec, reviewed)  # before screening: a changed definition is to be reviewed again
    try:  # screened again before it can be approved
        await anyio.to_thread.run_sync(lambda: check_screening(_state(gw), rec, accept=False))
    except ScreeningFlagged as e:
        raise ApprovalError(
            f"{e.message}; only `symbi tools approve --accept-screening` can approve it", 409
        ) from None
    h = await anyio.to_thread.run_sync(
        lambda: approve_current(
            _state(gw), gw.verifier.pins, rec, reviewed=reviewed, domain=srv.domain, actor=principal.id
        )
    )
    unrec = await record_action(
        gw,
        Event.TOOL_APPROVED,
        {"tool": rec.namespaced, "upstream": rec.upstream, "definition_hash": h, "via": "admin-api"},
        principal=principal.id,
    )
    # approved either way: the catalogue follows it, waited for a while only (a slow rebuild
    # after a 30 s record wait took the answer past the CLI's 45 s: a timeout for a done approval)
    fresh = await gw.refresh_within(REFRESH_WAIT_S)
    return with_record(unrec, 200, {"tool": rec.namespaced, "approved_hash": h, "catalogue_refreshed": fresh})


def discovered_rows(gw: Gateway | None) -> list[dict[str, Any]]:
    """Servers discovery found (mcp.discovery_enabled), without their env, headers or args."""
    if gw is None:
        return []
    from gateway.onboard.discovery import discovery_store

    return [d.public() for d in sorted(discovery_store(gw.config).entries().values(), key=lambda d: d.name)]


async def approve_discovered(
    gw: Gateway | None, name: str, principal: Principal, seen: str
) -> dict[str, Any]:
    """A person approves the config of a quarantined server they saw (``seen``: the listing's
    ``digest``): the discovery loop starts it (tofu) within ``mcp.recheck_interval_s`` and
    records ``server.approved``. Refused 404 when there is no such server, 409 with the reason
    when it cannot be approved (blocked, config in error), ``DefinitionChanged`` 409 when its
    file changed since the listing, ``ReviewedHashRequired`` 400 without a digest ("")."""
    gw = _running(gw)
    if not gw.config.mcp.discovery_enabled:
        raise ApprovalError("discovery is off in this gateway (mcp.discovery_enabled)", 409)
    from gateway.errors import ConfigError
    from gateway.onboard.discovery import discovery_store

    try:
        d = await anyio.to_thread.run_sync(
            lambda: discovery_store(gw.config).approve(name, by=principal.id, expect=seen)
        )
    except ConfigError as e:  # the discovery state cannot be read: unavailable here, not "not found"
        raise ApprovalError(e.message, 503) from None
    return d.public()
