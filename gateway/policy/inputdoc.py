"""The policy input document, built from a ``CallContext`` and the recent-call counters.

The shape is documented (with an example) in ``gateway/policy/README.md``; ``policies.rego``
and any user policy read exactly these fields.

Volume is about calls: a listing decision (``action = "list"``) carries zero counters, so it
is a function of who asks about which tool, and the engine's decision cache answers it again
(a ``tools/list`` repeated, and the visibility check of every ``tools/call``), where a counter
that moves with every call made each of them a new evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from gateway.context import AgentInfo, CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.policy.counters import CallCounters, RecentCounts

__all__ = [
    "Action",
    "CallCounters",
    "build_input",
    "entry_input",
    "input_for_call",
    "listing_inputs",
    "tool_input",
    "upstream_input",
]

Action = Literal["call", "list"]


# The last second written by ``_rfc3339`` and its text up to the seconds (one tuple: a thread
# reads a pair that belongs together).
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def _rfc3339(ns: int) -> str:
    """``datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds")`` with
    ``Z`` for ``+00:00``, exactly: the microseconds rounded from the same float as
    ``fromtimestamp`` rounds them (half to even, a carry into the next second), the date and
    time of day formatted once per second (calls of one second share them)."""
    global _last_second
    frac, whole = math.modf(ns / 1e9)
    us = round(frac * 1e6)
    sec = int(whole)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    last = _last_second
    if last[0] != sec:
        text = datetime.fromtimestamp(sec, tz=UTC).replace(tzinfo=None).isoformat(timespec="seconds")
        last = _last_second = (sec, text)
    return f"{last[1]}.{us // 1000:03d}Z"


def tool_input(tool: ToolInfo) -> dict[str, Any]:
    return {
        "name": tool.name,
        "original_name": tool.original_name,
        "upstream": tool.upstream,
        "annotations": dict(tool.annotations),
        "verification": tool.verification,
        "key_fingerprint": tool.key_fingerprint,
        "definition_hash": tool.definition_hash,
        "code_tool": bool(tool.code_tool),
        "verification_mode": tool.verification_mode,
        "screening": tool.screening.as_input(),
    }


def upstream_input(upstream: UpstreamInfo | None, name: str | None) -> dict[str, Any]:
    """The upstream's document; when the gateway does not know it (a tool of a built-in, a
    test's bare ToolInfo), its ``name`` (the tool's upstream) and nothing else."""
    if upstream is not None:
        return upstream.as_input()
    return {"name": name, "domain": None, "transport": None}


# The documents of a catalogue entry (its upstream's and its tool's), built once per entry
# rather than per call: ToolInfo and UpstreamInfo are frozen and never edited in place (a
# rebuilt, drifted or re-screened tool is a new ToolInfo), so a new entry is a new key. Kept by
# the tool's id with the tool and the upstream object they were built with (held, so no other
# live object has that id; another upstream object builds them again). The documents are
# shared by every input built from the entry: inputs are read, never edited (regorus copies
# them, the cache key reads them). Emptied when it holds ENTRY_DOCS entries.
ENTRY_DOCS = 4096
_EntryDocs = tuple[ToolInfo, UpstreamInfo | None, dict[str, Any], dict[str, Any]]
_entry_docs: dict[int, _EntryDocs] = {}


def entry_input(tool: ToolInfo, upstream: UpstreamInfo | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(upstream_input(upstream, tool.upstream), tool_input(tool))``, remembered per entry."""
    hit = _entry_docs.get(id(tool))
    if hit is None or hit[1] is not upstream:
        if len(_entry_docs) >= ENTRY_DOCS:
            _entry_docs.clear()
        hit = _entry_docs[id(tool)] = (
            tool,
            upstream,
            upstream_input(upstream, tool.upstream),
            tool_input(tool),
        )
    return hit[2], hit[3]


def build_input(
    *,
    principal: Principal,
    kind: str,
    target: str,
    action: Action = "call",
    tool: ToolInfo | None = None,
    upstream: UpstreamInfo | None = None,
    arguments: dict[str, Any] | None = None,
    session_id: str | None = None,
    counters: RecentCounts | None = None,
    now_ns: int | None = None,
    agent: AgentInfo | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The input document for one decision (see README for the fields); ``extra`` adds the
    fields of other kinds (``recipient`` / ``topic`` for the bus). A listing (``action =
    "list"``) ignores ``counters``: its counts are zero (volume applies to calls only)."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    if action == "list":
        counters = None
    minute = hour = tool_minute = 0
    if counters is not None:
        who = principal.qualified
        minute, hour = counters.principal_counts(who)
        tool_minute = counters.tool_count(who, tool.name) if tool else 0
    if tool:
        up_doc, tool_doc = entry_input(tool, upstream)
    else:
        up_doc, tool_doc = upstream_input(upstream, None), None
    parties = _last_parties  # the same caller as the last input's (stdio: every call)
    if parties is None or parties[0] is not principal or parties[1] is not agent or principal.claims:
        parties = _party_docs(principal, agent)
    doc = {
        "action": action,
        "kind": kind,
        "target": target,
        "principal": parties[2],
        "agent": parties[3],
        "upstream": up_doc,
        "tool": tool_doc,
        "arguments": dict(arguments or {}),
        "context": {
            "time": _rfc3339(now_ns),
            "unix": now_ns // 1_000_000_000,
            "session_id": session_id,
            "calls_last_minute": minute,
            "calls_last_hour": hour,
            "tool_calls_last_minute": tool_minute,
        },
    }
    if extra:
        doc.update(extra)
    return doc


def listing_inputs(
    principal: Principal,
    tools: Sequence[ToolInfo],
    *,
    upstreams: Mapping[str, UpstreamInfo] | None = None,
    session_id: str | None = None,
    agent: AgentInfo | None = None,
    now_ns: int | None = None,
) -> Iterator[dict[str, Any]]:
    """``build_input(action="list", kind="tools/call", ...)`` for each of ``tools``, the parts
    that do not depend on the tool (principal, agent, context) built once and shared by every
    document: inputs are read, never edited (regorus copies them, the cache key reads them)."""
    if not tools:
        return
    base = build_input(
        principal=principal,
        kind="tools/call",
        target=tools[0].name,
        action="list",
        session_id=session_id,
        now_ns=now_ns,
        agent=agent,
    )
    ups = upstreams or {}
    for t in tools:
        up_doc, tool_doc = entry_input(t, ups.get(t.upstream))
        yield {**base, "target": t.name, "upstream": up_doc, "tool": tool_doc, "arguments": {}}


# The principal's and the agent's documents of the calls of one session, built once: kept by
# the Principal and the AgentInfo objects (held, so no other live object has their ids). Both
# are frozen, and the runtime hands out a new AgentInfo whenever a field of its agent changes
# (``Agent.info``: its state around each call, a suspension), so a kept pair is never stale.
# Only for a principal without claims: ``Principal.claims`` is a mapping that can be edited in
# place, so a principal with claims gets its documents built per input as before; an empty one
# is checked empty on every use. Emptied when it holds PARTY_DOCS entries. The last pair
# used is also kept on its own (read whole, as ``_last_second``), asked first.
PARTY_DOCS = 4096
_Parties = tuple[Principal, AgentInfo | None, dict[str, Any], dict[str, Any] | None]
_parties: dict[tuple[int, int], _Parties] = {}
_last_parties: _Parties | None = None


def _party_docs(principal: Principal, agent: AgentInfo | None) -> _Parties:
    """``(principal, agent, principal.as_input(), _agent_input(principal, agent))``, kept for
    the next input when it may be (``_parties``)."""
    global _last_parties
    keep = not principal.claims
    if keep:
        hit = _parties.get((id(principal), id(agent)))
        if hit is not None and hit[0] is principal and hit[1] is agent:
            _last_parties = hit
            return hit
    parties = (principal, agent, principal.as_input(), _agent_input(principal, agent))
    # a tuple of roles cannot change under the kept document (a list could)
    if keep and type(principal.roles) is tuple:
        if len(_parties) >= PARTY_DOCS:
            _parties.clear()
        _parties[(id(principal), id(agent))] = _last_parties = parties
    return parties


def _agent_input(principal: Principal, agent: AgentInfo | None) -> dict[str, Any] | None:
    if agent is not None and agent.id == principal.agent:
        return agent.as_input()
    if principal.agent is None:
        return None
    # an id without the runtime's record (a component calling on an agent's behalf): id only
    return {"id": principal.agent, "name": None, "state": None, "priority": 0, "hosted": False}


def responses_json(responses: Any) -> Any:
    """A 2026-era client's ``input_responses`` as JSON (the SDK parsed each into a result
    model): what the policy and the audit see."""
    if not isinstance(responses, Mapping):
        return responses
    return {
        k: v.model_dump(by_alias=True, exclude_none=True, mode="json") if isinstance(v, BaseModel) else v
        for k, v in responses.items()
    }


def input_for_call(call: CallContext, counters: RecentCounts | None = None) -> dict[str, Any]:
    """The input document for the request ``call`` (action ``call``), with a 2026-era client's
    ``input_responses`` and ``request_state`` when it sent them: they reach the upstream with
    the arguments, so the policy sees them too."""
    doc = build_input(
        principal=call.principal,
        kind=call.kind,
        target=call.target,
        tool=call.tool,
        upstream=call.upstream,
        arguments=call.arguments,
        session_id=call.session_id,
        counters=counters,
        now_ns=call.started_ns,
        agent=call.agent,
    )
    if call.input_responses is not None or call.request_state is not None:
        doc["input_responses"] = responses_json(call.input_responses)
        doc["request_state"] = call.request_state
    return doc
