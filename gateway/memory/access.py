"""Who may read and write which memory: the policy asked with the memory input kinds.

The memory built-ins pass the call chain like any tool (verification, the tool's own policy
decision, audit). Then, per memory touched, they ask the same policy a second question:

- ``context/write``: store into the caller's own memory, or into a shared namespace;
- ``context/read``: recall from own memory / a shared namespace, or read ``memory://A/type``;
- ``knowledge/search``: search one knowledge base.

The input document is the call's (principal, agent, upstream, context) with ``kind`` set to one
of these and a ``memory`` object ``{owner, memory_type, namespace, base}``. A deny raises
``PolicyDenied`` with the policy's reasons and is recorded as a ``memory.denied`` event (metadata
only, never memory text). A shared memory is also screened as tool descriptions are
as written and as read (``screen_shared``, ``gateway.screen.asread``): a high finding refuses it (``ContentFlagged``). The ``redact_text`` condition of a ``context/write`` decision lists
regular expressions whose matches are replaced before the text is embedded or stored (and in
the metadata's string values, which others read back with it); the
operator's ``symbi knowledge add`` asks ``knowledge/ingest`` for the same patterns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from gateway.context import CallContext, Decision, Principal
from gateway.errors import ContentFlagged, ContextError, PolicyDenied
from gateway.events import Event, EventSink
from gateway.policy.engine import PolicyEngine
from gateway.policy.inputdoc import build_input
from gateway.policy.redact import REDACTED
from gateway.screen.asread import Reading, screened

MemoryKind = Literal["context/read", "context/write", "knowledge/search"]


def caller_agent(call: CallContext) -> str:
    """The calling agent (the gateway-made id of this MCP session), or a clear refusal."""
    agent = call.principal.agent
    if not agent:
        raise ContextError(
            f"memory and knowledge tools need an agent identity: principal {call.principal.id!r} "
            "has no agent on this session",
            reasons=["no agent identity on this session (memory is kept per agent)"],
        )
    return agent


def redact_text(text: str, patterns: Sequence[str]) -> tuple[str, int]:
    """``text`` with every match of ``patterns`` replaced by ``[REDACTED]``, and the count."""
    n = 0
    for p in patterns:
        text, k = re.subn(p, REDACTED, text)
        n += k
    return text, n


def redact_metadata(metadata: Any, patterns: Sequence[str]) -> tuple[dict[str, Any], int]:
    """``metadata`` with ``redact_text`` applied to each string value (stored and read back by
    others as the text is), and the count. Anything else is left to the manager's checks."""
    if not isinstance(metadata, dict):
        raise ContextError("arguments.metadata: expected an object")
    out: dict[str, Any] = {}
    n = 0
    for k, v in metadata.items():
        if isinstance(v, str):
            v, k_n = redact_text(v, patterns)
            n += k_n
        out[k] = v
    return out, n


class MemoryAccess:
    """Asks the policy about one memory operation; ``engine`` None means policy is off (logged at start)."""

    def __init__(self, engine: PolicyEngine | None, events: EventSink) -> None:
        self.engine = engine
        self.events = events

    async def decide(self, call: CallContext, kind: MemoryKind, memory: dict[str, Any]) -> Decision:
        if self.engine is None:
            return Decision(allow=True)
        doc = build_input(
            principal=call.principal,
            kind=kind,
            target=call.target,
            upstream=call.upstream,
            session_id=call.session_id,
            agent=call.agent,
        )
        doc["memory"] = memory
        return await self.engine.adecide(doc)

    async def allowed_bases(self, call: CallContext, bases: Sequence[str]) -> list[str]:
        """The knowledge bases the caller may search (when it named none: all it may see)."""
        out = []
        for b in bases:
            memory = {"owner": call.principal.agent, "memory_type": None, "namespace": None, "base": b}
            if (await self.decide(call, "knowledge/search", memory)).allow:
                out.append(b)
        return out

    async def check(
        self,
        call: CallContext,
        kind: MemoryKind,
        *,
        owner: str | None = None,
        memory_type: str | None = None,
        namespace: str | None = None,
        base: str | None = None,
    ) -> Decision:
        """The decision for one memory operation; a deny raises ``PolicyDenied`` and is recorded."""
        memory = {"owner": owner, "memory_type": memory_type, "namespace": namespace, "base": base}
        decision = await self.decide(call, kind, memory)
        if not decision.allow:
            self._denied(call, kind, memory, list(decision.reasons))
            raise PolicyDenied(
                f"policy denied {kind} on {namespace or base or owner}", reasons=list(decision.reasons)
            )
        return decision

    def screen_shared(
        self, call: CallContext, owner: str, namespace: str, text: str, metadata: dict[str, Any]
    ) -> None:
        """Refuse a shared memory whose text or metadata speaks to the model of the agents that
        recall it (the tool definitions' high screening findings): what one agent shares lands in
        another's context, as a tool description does. Recorded as ``memory.denied`` with the
        rules and fields, never the text.

        Raises:
            ContentFlagged: nothing is stored.
        """
        fields = [("text", text), *((f"metadata.{k}", v) for k, v in metadata.items() if isinstance(v, str))]
        # its keys too (returned with it), and all of it as one text (an instruction split
        # between the text and a metadata value); as written and as read
        keys = [(f"metadata.{k} (key)", k) for k in metadata]
        flagged = screened(fields, names=keys, joined="text and metadata (joined)").findings
        if not flagged:
            return
        reasons = Reading.reasons(flagged)
        memory = {"owner": owner, "memory_type": "shared", "namespace": namespace, "base": None}
        self._denied(call, "context/write", memory, reasons)
        raise ContentFlagged(f"shared memory {namespace!r} not stored: screening flagged it", reasons=reasons)

    def _denied(
        self, call: CallContext, kind: MemoryKind, memory: dict[str, Any], reasons: list[str]
    ) -> None:
        self.events.emit(
            Event.MEMORY_DENIED,
            {"kind": kind, **memory, "tool": call.target, "reasons": reasons},
            principal=call.principal.id,
            agent=call.principal.agent,
        )


# `symbi knowledge add` asks as the operator: it owns the config and the data dir
OPERATOR = Principal("operator", kind="admin")


def ingest_patterns(engine: PolicyEngine | None, base: str) -> list[str]:
    """The patterns the policy redacts from a knowledge base's files before they are embedded
    (kind ``knowledge/ingest``); a deny stops the ingestion with the policy's reasons."""
    if engine is None:
        return []
    doc = build_input(principal=OPERATOR, kind="knowledge/ingest", target=base)
    doc["memory"] = {"owner": None, "memory_type": None, "namespace": None, "base": base}
    decision = engine.decide(doc)
    if not decision.allow:
        raise PolicyDenied(f"policy denied knowledge/ingest on {base}", reasons=list(decision.reasons))
    return text_patterns(decision)


def text_patterns(decision: Decision) -> list[str]:
    pats: Any = decision.conditions.get("redact_text", [])
    return list(pats)
