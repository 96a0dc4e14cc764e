"""Resolve the client's name to a catalogue entry (unknown or hidden → refused).

A tool the policy hides from this principal answers exactly like a tool that does not
exist, and before anything else looks at the call: no verification state, argument
validation error or policy reason may tell a caller that a hidden tool is there.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.catalog import LiveCatalog
from gateway.chain import CallNext
from gateway.context import CallContext, ToolInfo
from gateway.errors import UnknownTool
from gateway.policy.engine import PolicyEngine
from gateway.screen.screener import Screening
from gateway.steps.policy import listed
from gateway.visibility import SeenTools


class ResolveTool:
    """Looks the tool up in the current catalogue snapshot and fills ``call.tool``.

    With a policy, the tool must also be one the principal may see (the listing decision).
    """

    def __init__(self, catalog: LiveCatalog, policy: PolicyEngine | None = None) -> None:
        self._catalog = catalog
        self._policy = policy
        # catalogue entry -> the same tool as asked about for visibility (see _sees); by
        # identity: a rebuilt or drifted entry is a new ToolInfo, so it gets its own probe
        self._probes: dict[int, tuple[ToolInfo, ToolInfo]] = {}
        self._seen = SeenTools(policy)  # who was let see which entry, under which policy

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        if call.kind == "tools/call" and call.tool is None:
            entry = self._catalog.snapshot.tools.get(call.target)
            if entry is None or not await self._sees(call, entry.info):
                raise UnknownTool(f"unknown tool {call.target!r}")
            call.tool = entry.info
            call.upstream = self._catalog.upstream_info(entry.info.upstream)
        return await call_next(call)

    async def _sees(self, call: CallContext, info: ToolInfo) -> bool:
        if self._policy is None:
            return True
        # Visibility is about the principal's grants: the tool is asked about as if it were
        # approved and screened clean, so whoever may see it learns why it is refused
        # (drifted, revoked, unverified, flagged: the verify or policy step), and nobody else
        # learns that it exists. Asked with what tools/list is asked with (the calling agent; no
        # counters: volume applies to calls), so a repeated call finds this decision in the
        # engine's cache instead of evaluating it again.
        # A caller asking again about the same entry under the same policy gets the answer it
        # got (SeenTools: its key covers the whole listing input).
        seen, token = self._seen.recall(call, info)
        if seen:
            return True
        allowed = await listed(
            self._policy, call.principal, self._probe(info), agent=call.agent, session_id=call.session_id
        )
        if allowed and token is not None:
            self._seen.keep(token)
        return allowed

    def _probe(self, info: ToolInfo) -> ToolInfo:
        hit = self._probes.get(id(info))
        if hit is not None and hit[0] is info:  # the entry holds ``info``: its id is not reused
            return hit[1]
        probe = replace(info, verification="verified", screening=Screening())
        if len(self._probes) >= 4096:  # catalogue rebuilds leave old entries behind: bounded
            self._probes.clear()
        self._probes[id(info)] = (info, probe)
        return probe
