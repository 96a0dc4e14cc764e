"""The memory access checks in-process, against the real embedded policy engine (OPA/rego).

Found by mutation testing (group "memory-security", scripts/mutate.py): the gateway-level
tests use the shipped policy, which reads only the principal and the memory object, so
nothing checked that a memory decision's input document carries the call's target,
upstream, session and agent (a site policy may decide on them), what a ``memory.denied``
event records, that redaction counts the matches of every pattern, or that the operator's
``knowledge/ingest`` question is asked with the base and refused on a deny.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.context import AgentInfo, CallContext, Decision, Principal, UpstreamInfo
from gateway.errors import ContextError, PolicyDenied
from gateway.events import Event
from gateway.memory.access import MemoryAccess, caller_agent, ingest_patterns, redact_text, text_patterns
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.policy.redact import REDACTED

ALICE = Principal("alice", roles=("tester",), agent="agent-a")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None, str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details), principal, agent))


def _engine(tmp_path: Path, rules: str) -> EmbeddedEngine:
    """A real policy: allow when ``rules`` hold, else deny with the reason "no"."""
    (tmp_path / "p.rego").write_text(
        "package symbi\nimport rego.v1\n"
        f"allow if {{ {rules} }}\n"
        'decision := {"allow": true, "reasons": [], "conditions": {"redact_text": ["pw=\\\\S+", "k-\\\\d+"]}} if allow\n'
        'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
    )
    engine = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert engine.load()
    return engine


def _call(principal: Principal = ALICE, **kw: Any) -> CallContext:
    return CallContext(
        principal=principal,
        kind="tools/call",
        target="memory__recall",
        arguments={},
        session_id="s-1",
        agent=AgentInfo("agent-a", "alice/cli", "Running", priority=3),
        upstream=UpstreamInfo("memory", "builtin"),
        **kw,
    )


def test_a_memory_decision_sees_the_calls_target_upstream_session_and_agent(tmp_path: Path) -> None:
    """A site policy may decide on any field of the call: each one is checked here by a policy
    that allows only when every one holds the call's value."""
    engine = _engine(
        tmp_path,
        'input.kind == "context/read"; input.target == "memory__recall"; input.upstream.name == "memory";'
        ' input.context.session_id == "s-1"; input.agent.name == "alice/cli"; input.agent.priority == 3;'
        ' input.principal.id == "alice"; input.memory.owner == "agent-a";'
        ' input.memory.memory_type == "long_term"; input.memory.namespace == null; input.memory.base == null',
    )
    access = MemoryAccess(engine, Recorder())
    d = anyio.run(lambda: access.check(_call(), "context/read", owner="agent-a", memory_type="long_term"))
    assert d.allow and text_patterns(d) == ["pw=\\S+", "k-\\d+"]
    # each field on its own: a call that differs in just one of them is denied
    variants = [
        replace(_call(), session_id="s-2"),
        replace(_call(), target="memory__store"),
        replace(_call(), upstream=UpstreamInfo("other", "builtin")),
        replace(_call(), agent=AgentInfo("agent-a", "alice/other", "Running", 3)),
    ]
    for v in variants:
        with pytest.raises(PolicyDenied):
            anyio.run(partial(access.check, v, "context/read", owner="agent-a", memory_type="long_term"))


def test_a_deny_raises_policy_denied_and_records_metadata_only(tmp_path: Path) -> None:
    engine = _engine(tmp_path, 'input.memory.namespace == "team"')
    rec = Recorder()
    access = MemoryAccess(engine, rec)
    with pytest.raises(PolicyDenied) as e:
        anyio.run(
            lambda: access.check(
                _call(), "context/write", owner="agent-a", memory_type="shared", namespace="x"
            )
        )
    assert e.value.reasons == ["no"]
    assert rec.events == [
        (
            Event.MEMORY_DENIED,
            {
                "kind": "context/write",
                "owner": "agent-a",
                "memory_type": "shared",
                "namespace": "x",
                "base": None,
                "tool": "memory__recall",
                "reasons": ["no"],
            },
            "alice",
            "agent-a",
        )
    ]
    ok = anyio.run(
        lambda: access.check(
            _call(), "context/write", owner="agent-a", memory_type="shared", namespace="team"
        )
    )
    assert ok.allow and len(rec.events) == 1  # an allow records nothing


def test_without_a_policy_engine_every_memory_operation_is_allowed_and_nothing_recorded() -> None:
    rec = Recorder()
    access = MemoryAccess(None, rec)
    d = anyio.run(lambda: access.check(_call(), "context/read", owner="agent-b", memory_type="long_term"))
    assert d == Decision(allow=True) and rec.events == []
    assert anyio.run(access.allowed_bases, _call(), ["a", "b"]) == ["a", "b"]
    assert ingest_patterns(None, "docs") == []


def test_redaction_replaces_and_counts_the_matches_of_every_pattern() -> None:
    text, n = redact_text("pw=hunter2 and k-1 then k-22, pw=x", ["pw=\\S+", "k-\\d+"])
    assert text == f"{REDACTED} and {REDACTED} then {REDACTED}, {REDACTED}" and n == 4
    assert redact_text("nothing here", ["pw=\\S+"]) == ("nothing here", 0)
    assert redact_text("pw=1", []) == ("pw=1", 0)


def test_the_ingest_question_is_asked_as_the_operator_about_the_base(tmp_path: Path) -> None:
    engine = _engine(
        tmp_path,
        'input.kind == "knowledge/ingest"; input.target == "docs"; input.principal.id == "operator";'
        ' input.memory == {"owner": null, "memory_type": null, "namespace": null, "base": "docs"}',
    )
    assert ingest_patterns(engine, "docs") == ["pw=\\S+", "k-\\d+"]
    with pytest.raises(PolicyDenied) as e:
        ingest_patterns(engine, "other")
    assert e.value.reasons == ["no"]


def test_a_decision_without_redact_text_has_no_patterns() -> None:
    assert text_patterns(Decision(allow=True)) == []


def test_memory_needs_the_callers_agent_identity() -> None:
    assert caller_agent(_call()) == "agent-a"
    with pytest.raises(ContextError):
        caller_agent(_call(principal=Principal("local", roles=("tester",))))
