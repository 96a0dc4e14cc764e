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
(``screen_shared``): a high finding refuses it (``ContentFlagged``). The ``redact_text`` condition of a ``context/write`` decision lists
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
from gateway.screen.rules import INVISIBLE
from gateway.screen.screener import Finding, screen_texts

MemoryKind = Literal["context/read", "context/write", "knowledge/search"]
# the screening categories that speak to the model (its instructions), not about things
MODEL_DIRECTED = frozenset({"hidden-instructions", "concealment", "shadowing"})
# Unicode tag characters: invisible, and read by models as the ASCII they shadow ("ASCII
# smuggling"). Dropped with the other invisible characters, a whole instruction written in
# them disappeared before screening and was stored and handed to agents as it was
_TAGS = re.compile("[\U000e0020-\U000e007e]")
_L = r"[^\W\d_]"  # a letter
# hyphens and dashes (ASCII, U+2010-2015), dots and middle dots: what splits a word for a rule
_DASHES = r"\-.\u00b7\u2010-\u2015\u2027\u30fb"
# inside a word only (a letter on both sides): emphasis/code marks ("Ig**nore"), a run of two
# or more '_' ("Ig__nore"), one or two dashes or dots ("pre-vious", "Ig--nore", "Ig\u2010nore").
# A mark touching '<', '>', '(', ',' or a blank stays: `std::vector<Instruction *>` is code,
# read as '<Instruction >' it tripped the tag rule (SP001)
_INWORD = re.compile(rf"(?<={_L})(?:[*~`]+|_{{2,}}|[{_DASHES}]{{1,2}})(?={_L})")
# emphasis as a balanced pair around words ("**Never**", "_previous_", "~~old~~"): opened after
# a blank or a quote, the words start and end with a letter and hold no mark (each opener
# scans to the next mark at most: linear), closed before a blank or punctuation. Code spans
# (backticks) are read as code: "stored in `secret` mode" stays; and a lone '_' ("if k in
# _secret:") is part of a name
_PAIR = re.compile(rf"(?<![^\s\"'])([*_~]{{1,3}})({_L}(?:[^\n<>*_~]{{0,200}}?{_L})?)\1(?![^\s.,;!?\"')])")
# the closing half of '__' emphasis opened inside a word ("Ig__nore__ all")
_TRAIL = re.compile(rf"(?<={_L})_{{2,}}(?=[\s.,;!?\"')]|\Z)")
# three or more single letters apart, by one blank (a space, a tab, U+00A0, U+3000), dash, dot,
# '/' or '_' ("I g n o r e", "I\u00a0g\u00a0n", "I.g.n.o.r.e", "I_g_n_o_r_e")
_SEP = rf"(?:[^\S\r\n]|[/_{_DASHES}])"
_SPACED = re.compile(rf"(?<!{_L})(?:{_L}{_SEP}){{2,}}{_L}(?!{_L})")
_SEPS = re.compile(_SEP)


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


def as_read(text: str) -> str:
    """``text`` as a model reads it: tag characters as the ASCII they stand for, the other
    invisible characters (a BOM, a soft hyphen, a zero-width space) gone."""
    text = _TAGS.sub(lambda m: chr(ord(m.group()) - 0xE0000), text)
    return INVISIBLE.sub("", text)


def unformatted(text: str) -> str:
    """``as_read(text)`` without what splits a word for a rule but not for a model: Markdown
    emphasis (a balanced pair around words, or marks inside a word), a dash or dot inside a
    word, letters spaced apart. Code stays code: a mark next to '<', '>', '(' or a blank, a
    backtick code span and a '_' inside or before a name are kept."""
    text = _INWORD.sub("", as_read(text))
    text = _TRAIL.sub("", _PAIR.sub(lambda m: m.group(2), text))
    return _SPACED.sub(lambda m: _SEPS.sub("", m.group()), text)


def screened_as_read(fields: Sequence[tuple[str, str]], joined: str | None = None) -> list[Finding]:
    """The high findings that speak to the model in ``fields`` read as ``unformatted`` (each
    field named "... (as read)"): what the screening of the text as written misses when an
    instruction is split by formatting or written in tag characters."""
    views = [(f"{field} (as read)", unformatted(text)) for field, text in fields]
    if all(v == t for (_, v), (_, t) in zip(views, fields, strict=True)):
        return []
    found = screen_texts(views, joined=f"{joined} (as read)" if joined else None).at_least("high")
    return [f for f in found if f.category in MODEL_DIRECTED]


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
        # between the text and a metadata value)
        keys = [(f"metadata.{k} (key)", k) for k in metadata]
        flagged = list(screen_texts(fields, names=keys, joined="text and metadata (joined)").at_least("high"))
        rules = {f.rule for f in flagged}
        flagged += [f for f in screened_as_read(fields, "text and metadata") if f.rule not in rules]
        if not flagged:
            return
        reasons = [f"{f.field}: {f.summary} ({f.rule})" for f in flagged]
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
