"""Which knowledge bases a caller's knowledge tool searches, in-process with a real policy.

Found by mutation testing (group "memory-security", scripts/mutate.py): the shipped policy
reads the base and the agent only, so nothing checked the whole memory object asked about a
base the caller names (its owner is the calling agent), that a single base named as a string
is checked like a list of one, nor which bases an unnamed search covers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import types

from gateway.context import CallContext, Principal, ToolInfo
from gateway.errors import ContextError, PolicyDenied
from gateway.events import Event, LoggingSink
from gateway.memory.access import MemoryAccess
from gateway.memory.builtin import KnowledgeBuiltin, MemoryBuiltin, MemoryService
from gateway.memory.embed import HashingEmbedder
from gateway.memory.manager import ContextManager
from gateway.memory.store import CollectionSpec, EdgeStore
from gateway.memory.types import AgentContext
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from tests.memory.conftest import Clock

CALL = CallContext(
    principal=Principal("alice", roles=("tester",), agent="agent-a"),
    kind="tools/call",
    target="knowledge__search",
    arguments={},
)


@pytest.fixture
def builtin(tmp_path: Path) -> Iterator[KnowledgeBuiltin]:
    """Bases "open" and "closed"; the policy allows knowledge/search on "open" for this exact
    memory object only (owner: the calling agent)."""
    (tmp_path / "p.rego").write_text(
        "package symbi\nimport rego.v1\n"
        'want := {"owner": "agent-a", "memory_type": null, "namespace": null, "base": "open"}\n'
        'allow if { input.kind == "knowledge/search"; input.memory == want }\n'
        'decision := {"allow": allow, "reasons": [], "conditions": {}} if allow\n'
        'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
    )
    engine = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert engine.load()
    emb = HashingEmbedder(64)
    spec = CollectionSpec("kb", emb.dimension, emb.id)
    m = ContextManager(lambda: EdgeStore(spec, tmp_path / "v"), lambda: emb, clock=Clock())
    service = MemoryService(m, MemoryAccess(engine, LoggingSink()))
    for base in ("open", "closed"):
        (tmp_path / base).mkdir()
        (tmp_path / base / "a.md").write_text(f"# {base}\n\nthe {base} handbook\n")
        service.kb.add(base, tmp_path / base)
    yield KnowledgeBuiltin(service)
    m.close()


def test_a_named_base_is_asked_about_with_the_callers_agent_as_owner(builtin: KnowledgeBuiltin) -> None:
    assert anyio.run(builtin._bases, CALL, ["open"]) == ["open"]
    with pytest.raises(PolicyDenied):
        anyio.run(builtin._bases, CALL, ["open", "closed"])


def test_a_single_base_named_as_a_string_is_checked_like_a_list_of_one(builtin: KnowledgeBuiltin) -> None:
    assert anyio.run(builtin._bases, CALL, "open") == ["open"]
    with pytest.raises(PolicyDenied):
        anyio.run(builtin._bases, CALL, "closed")


def test_no_base_named_searches_every_base_the_caller_may_search(builtin: KnowledgeBuiltin) -> None:
    assert anyio.run(builtin._bases, CALL, None) == ["open"]


def test_bases_that_are_not_names_are_refused(builtin: KnowledgeBuiltin) -> None:
    for bad in (7, ["open", 7], {"open": 1}):
        with pytest.raises(ContextError):
            anyio.run(builtin._bases, CALL, bad)


# --- the memory built-in: what a caller may read and end --------------------------------------

MEMORY_POLICY = (
    "package symbi\nimport rego.v1\n"
    # own memory only (the shipped rule); shared namespace "team" only; writes to own memory
    'allow if { input.kind == "context/read"; input.memory.owner == input.agent.id;'
    " input.memory.namespace == null }\n"
    'allow if { input.kind == "context/read"; input.memory.memory_type == "shared";'
    ' input.memory.namespace == "team" }\n'
    'allow if { input.kind == "context/write"; input.memory.owner == input.agent.id;'
    " input.memory.namespace == null }\n"
    'decision := {"allow": allow, "reasons": [], "conditions": {}} if allow\n'
    'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
)
A = Principal("alice", roles=("tester",), agent="agent-a")
B = Principal("bob", roles=("tester",), agent="agent-b")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        self.events.append((event_type, dict(details)))


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[tuple[MemoryBuiltin, Recorder]]:
    (tmp_path / "m.rego").write_text(MEMORY_POLICY)
    engine = EmbeddedEngine(PolicyFiles(policy=tmp_path / "m.rego"))
    assert engine.load()
    emb = HashingEmbedder(64)
    spec = CollectionSpec("mem", emb.dimension, emb.id)
    rec = Recorder()
    m = ContextManager(lambda: EdgeStore(spec, tmp_path / "v"), lambda: emb, clock=Clock(), events=rec)
    m.store_context("agent-a", AgentContext("alice's plan", "long_term"))
    m.store_context("agent-a", AgentContext("alice's step", "working", task="t1"))
    m.store_context("agent-a", AgentContext("alice to team", "shared", namespace="team"))
    m.store_context("agent-a", AgentContext("alice to ops", "shared", namespace="ops"))
    yield MemoryBuiltin(MemoryService(m, MemoryAccess(engine, rec))), rec
    m.close()


def _read(b: MemoryBuiltin, who: Principal, uri: str) -> list[str]:
    call = CallContext(principal=who, kind="resources/read", target=uri)
    res = anyio.run(b.read_resource, call)
    body = res.contents[0]
    assert isinstance(body, types.TextResourceContents) and body.mime_type == "application/json"
    return [i["text"] for i in json.loads(body.text)]


def _tool(who: Principal, name: str, **args: Any) -> CallContext:
    info = ToolInfo(f"memory__{name}", name, "memory", {})
    return CallContext(principal=who, kind="tools/call", target=info.name, arguments=args, tool=info)


def test_a_memory_resource_is_read_as_its_owner_decides(memory: tuple[MemoryBuiltin, Recorder]) -> None:
    b, rec = memory
    assert _read(b, A, "memory://agent-a/long_term") == ["alice's plan"]
    assert _read(b, A, "memory://agent-a/working") == ["alice's step"]
    assert _read(b, B, "memory://agent-a/shared/team") == ["alice to team"]
    assert rec.events[-1] == (
        Event.MEMORY_READ,
        {
            "tool": "memory://agent-a/shared/team",
            "owner": "agent-a",
            "memory_type": "shared",
            "namespace": "team",
            "results": 1,
        },
    )
    for who, uri in (
        (B, "memory://agent-a/long_term"),
        (B, "memory://agent-a/working"),
        (B, "memory://agent-a/shared/ops"),
    ):
        with pytest.raises(PolicyDenied):
            _read(b, who, uri)
    denied = [d for t, d in rec.events if t == Event.MEMORY_DENIED]
    assert [(d["owner"], d["memory_type"], d["namespace"]) for d in denied] == [
        ("agent-a", "long_term", None),
        ("agent-a", "working", None),
        ("agent-a", "shared", "ops"),
    ]


def test_a_malformed_memory_uri_or_a_caller_without_an_agent_is_refused(
    memory: tuple[MemoryBuiltin, Recorder],
) -> None:
    b, rec = memory
    for uri in (
        "memory://agent-a",
        "memory://agent-a/secret",
        "memory://agent-a/long_term/x/y",
        "memory://agent-a/shared",
    ):
        with pytest.raises(ContextError):
            _read(b, A, uri)
    with pytest.raises(ContextError):
        _read(b, Principal("local", roles=("tester",)), "memory://agent-a/long_term")
    assert not [t for t, _ in rec.events if t in (Event.MEMORY_READ, Event.MEMORY_DENIED)]


def test_ending_a_task_clears_the_callers_working_memory_only_when_allowed(
    memory: tuple[MemoryBuiltin, Recorder],
) -> None:
    b, rec = memory
    r = anyio.run(b.call, _tool(A, "end_task", task="t1"))
    assert r.structured_content == {"task": "t1", "cleared": 1}
    assert rec.events[-1] == (
        Event.MEMORY_TASK_ENDED,
        {"tool": "memory__end_task", "task": "t1", "cleared": 1},
    )
    assert _read(b, A, "memory://agent-a/working") == []
    with pytest.raises(ContextError):
        anyio.run(b.call, _tool(Principal("local", roles=("tester",)), "end_task", task="t1"))
    with pytest.raises(ContextError):
        anyio.run(b.call, _tool(A, "forget_everything"))


def test_store_and_recall_reach_the_callers_own_memory(memory: tuple[MemoryBuiltin, Recorder]) -> None:
    b, _ = memory
    r = anyio.run(b.call, _tool(B, "store", text="bob's note", type="long_term"))
    assert not r.is_error and r.structured_content is not None and r.structured_content["type"] == "long_term"
    got = anyio.run(b.call, _tool(B, "recall", query="note", types=["long_term"]))
    assert got.structured_content is not None
    assert [i["text"] for i in got.structured_content["items"]] == ["bob's note"]


def test_ending_a_task_is_asked_as_a_write_to_the_callers_working_memory(tmp_path: Path) -> None:
    """The access check of end_task names the memory type it clears: a site policy that lets an
    agent write only its working memory must let it end its task (a survivor of _end_task)."""
    (tmp_path / "w.rego").write_text(
        "package symbi\nimport rego.v1\n"
        'allow if { input.kind == "context/write"; input.memory.owner == input.agent.id;'
        ' input.memory.memory_type == "working" }\n'
        'decision := {"allow": allow, "reasons": [], "conditions": {}} if allow\n'
        'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
    )
    engine = EmbeddedEngine(PolicyFiles(policy=tmp_path / "w.rego"))
    assert engine.load()
    emb = HashingEmbedder(64)
    spec = CollectionSpec("mem", emb.dimension, emb.id)
    m = ContextManager(lambda: EdgeStore(spec, tmp_path / "v"), lambda: emb, clock=Clock())
    try:
        m.store_context("agent-a", AgentContext("alice's step", "working", task="t1"))
        b = MemoryBuiltin(MemoryService(m, MemoryAccess(engine, Recorder())))
        r = anyio.run(b.call, _tool(A, "end_task", task="t1"))
        assert r.structured_content == {"task": "t1", "cleared": 1}
        with pytest.raises(PolicyDenied):  # the same policy: nothing but working memory
            anyio.run(b.call, _tool(A, "store", text="a plan", type="long_term"))
    finally:
        m.close()
