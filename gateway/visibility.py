"""What the policy lets a caller see: listings filtered by the same rule as the calls.

A caller is shown only the tools, resources and prompts the policy would let it use (the
question asked with ``action = "list"``); with the policy off, everything. The gateway's
listings, pages and pushed ``list_changed`` notifications (``gateway.announce``) all ask here,
so a listing never shows what a call would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.catalog import CatalogTool
from gateway.context import Principal, UpstreamInfo
from gateway.policy.inputdoc import build_input
from gateway.runtime.agents import AgentRegistry
from gateway.steps.policy import afilter_listing

if TYPE_CHECKING:
    from gateway.policy.engine import PolicyEngine


class Visibility:
    """Listing filters over one policy engine (None: the config turned the policy off)."""

    def __init__(
        self,
        policy: PolicyEngine | None,
        agents: AgentRegistry,
        upstream_info: Callable[[str], UpstreamInfo],
    ) -> None:
        self._policy = policy
        self._agents = agents
        self._upstream_info = upstream_info

    async def among(self, principal: Principal, entries: list[CatalogTool]) -> list[CatalogTool]:
        """Of ``entries``, those the policy lets ``principal`` see."""
        if self._policy is None:
            return entries
        infos = [e.info for e in entries]
        allowed = {
            t.name
            for t in await afilter_listing(
                self._policy, principal, infos, agent=self._agents.info(principal.agent)
            )
        }
        return [e for e in entries if e.info.name in allowed]

    async def targets(self, principal: Principal, kind: str, pairs: list[tuple[str, str]]) -> set[str]:
        """Of (target, upstream) pairs for resources/read or prompts/get, those ``principal`` may use."""
        if self._policy is None:
            return {t for t, _ in pairs}
        allowed: set[str] = set()
        for target, upstream in pairs:
            inp = build_input(
                principal=principal,
                kind=kind,
                target=target,
                action="list",
                upstream=self._upstream_info(upstream),
                agent=self._agents.info(principal.agent),
            )
            if (await self._policy.adecide(inp)).allow:
                allowed.add(target)
        return allowed
