"""Refuse a call to a tool whose definition is not the approved one (strict/tofu), mark it (warn)."""

from __future__ import annotations

import logging
from typing import Any

from mcp import types

from gateway.chain import CallNext
from gateway.context import APPROVED, CallContext
from gateway.errors import VerificationDenied
from gateway.verify.revocations import REVOKED_REASON, Revocations

_logger = logging.getLogger("symbi.verify")


class VerifyTool:
    """Checks the catalogue's verdict on ``call.tool`` (computed at every refresh).

    strict/tofu: anything but verified/pinned is refused with the reason (drift, revoked key,
    bad signature, no signature). warn: the call goes on, and the result's ``_meta`` and the
    audit record say the tool is unverified. off: a warning on every call. In every mode a
    tool in ``revocations`` is refused, before a rebuild marks it revoked in the catalogue.
    """

    def __init__(self, revocations: Revocations | None = None) -> None:
        self._revocations = revocations

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        tool = call.tool
        if call.kind != "tools/call" or tool is None:
            return await call_next(call)
        if tool.blocked:
            raise VerificationDenied(
                f"tool {tool.name!r} is not an approved tool ({tool.verification})",
                reasons=[tool.verification_reason or f"verification status: {tool.verification}"],
            )
        revocations = self._revocations  # the hot path: no method call while nothing is revoked
        if revocations is not None and revocations.tools and revocations.revoked(tool):
            raise VerificationDenied(
                f"tool {tool.name!r} is not an approved tool (revoked)",
                reasons=[REVOKED_REASON],
            )
        unverified = tool.verification not in APPROVED
        if unverified:  # only warn/off upstreams let an unapproved tool this far: an unsafe option
            _logger.warning(
                "UNSAFE: calling %s (%s) with verification %s for upstream %r",
                tool.name,
                tool.verification,
                tool.verification_mode.upper(),
                tool.upstream,
            )
        call.unverified_warning = unverified
        result = await call_next(call)
        if unverified and isinstance(result, types.CallToolResult):
            meta = dict(result.meta or {})
            meta["symbi/verification"] = {
                "status": tool.verification,
                "warning": tool.verification_reason or "this tool's definition is not verified",
            }
            result = result.model_copy(update={"meta": meta})
        return result
