"""What the policy lets a caller see: listings filtered by the same rule as the calls.

A caller is shown only the tools, resources and prompts the policy would let it use (the
question asked with ``action = "list"``); with the policy off, everything. The gateway's
listings, pages and pushed ``list_changed`` notifications (``gateway.announce``) all ask here,
so a listing never shows what a call would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.catalog import CatalogTool
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.policy.engine import EmbeddedEngine, PolicyEngine
from gateway.policy.inputdoc import build_input
from gateway.policy.inputkey import ALL, InputReads
from gateway.policy.loader import PolicyBundle
from gateway.runtime.agents import AgentRegistry
from gateway.steps.policy import afilter_listing


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


# Tools a caller was let see, remembered (SeenTools) up to this many (principal, agent, session,
# tool) at a time: emptied when full.
SEEN_ENTRIES = 4096
# The parts of a listing input that change from call to call and are in no SeenTools key (the
# time of the call): a policy that can read one is asked every time.
UNKEYED_CONTEXT = ("time", "unix")

MemoKey = tuple[Any, ...]
# (key, the policy in force, the claims' repr, the catalogue entry: held, so its id in the key
# is no other entry's while the answer is remembered)
Token = tuple[MemoKey, PolicyBundle, str | None, ToolInfo]


def rememberable(reads: InputReads | None) -> bool:
    """Whether listing decisions under a policy with these reads are a function of SeenTools'
    key: it calls no volatile builtin (``reads`` is not None) and reads no part of the listing
    input that is out of the key (all of the input, all of its context, the call's time)."""
    if reads is None or ALL in reads.trie:
        return False
    context = reads.trie.get("context")
    return context is None or not (ALL in context or any(k in context for k in UNKEYED_CONTEXT))


class SeenTools:
    """The visibility check of each ``tools/call`` (``gateway.steps.resolve``) answered from
    memory when the same caller asks about the same tool again under the same policy.

    The listing input of that check (``steps.policy.listed``) is a function of the principal
    (id, kind, roles, claims, source, issuer, agent id), the calling agent's document, the
    session, the catalogue entry and the time: the key holds all of them but the time, and a
    policy that can read the time (or its volatile builtins) is never remembered. An entry
    holds the policy it was decided under (``EmbeddedEngine.bundle``: a reload or an adopted
    policy is a new bundle) and the catalogue entry itself (a rebuilt or drifted entry is a new
    ``ToolInfo``), so neither outlives a change. Only an allow is kept: a refusal is asked
    again (a failed evaluation denies, and must not hide a tool for longer than itself). Only
    the embedded engine with its cache on: a remote OPA's policy changes without a sign here.
    """

    def __init__(self, policy: PolicyEngine | None, entries: int = SEEN_ENTRIES) -> None:
        self._engine = policy if isinstance(policy, EmbeddedEngine) and policy.cache_entries else None
        self._entries = entries
        self._seen: dict[MemoKey, Token] = {}
        self._judged: tuple[PolicyBundle | None, bool] = (None, False)  # bundle, rememberable

    def _bundle(self) -> PolicyBundle | None:
        """The policy in force if its listing decisions may be remembered, else None."""
        engine = self._engine
        bundle = engine.bundle if engine is not None else None
        if bundle is None:
            return None
        judged, ok = self._judged
        if judged is not bundle:  # another policy: what the last one let see is let go
            ok = rememberable(bundle.reads)
            self._judged = (bundle, ok)
            self._seen.clear()
        return bundle if ok else None

    def recall(self, call: CallContext, info: ToolInfo) -> tuple[bool, Token | None]:
        """(whether ``call``'s principal was let see ``info`` under the policy in force, a token
        for ``keep`` after asking; None when the answer may not be remembered)."""
        bundle = self._bundle()
        if bundle is None:
            return False, None
        p, a = call.principal, call.agent
        agent = (a.id, a.name, a.state, a.priority, type(a.priority), a.hosted) if a is not None else None
        key = (call.session_id, id(info), p.id, p.kind, p.roles, p.source, p.issuer, p.agent, agent)
        # the claims as kept: their repr, a copy no one edits that tells 1, 1.0 and True apart
        # as the policy does
        claims = repr(p.claims) if p.claims else None
        try:
            hit = self._seen.get(key)
        except TypeError:  # an unhashable part (a list for roles): asked every time
            return False, None
        if hit is not None and hit[1] is bundle and hit[2] == claims:
            return True, None
        return False, (key, bundle, claims, info)

    def keep(self, token: Token) -> None:
        """Remember that the caller ``recall`` gave ``token`` to may see its tool (an allow)."""
        if len(self._seen) >= self._entries:
            self._seen.clear()
        self._seen[token[0]] = token
