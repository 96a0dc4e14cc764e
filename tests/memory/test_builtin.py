"""Which knowledge bases a caller's knowledge tool searches, in-process with a real policy.

Found by mutation testing (group "memory-security", scripts/mutate.py): the shipped policy
reads the base and the agent only, so nothing checked the whole memory object asked about a
base the caller names (its owner is the calling agent), that a single base named as a string
is checked like a list of one, nor which bases an unnamed search covers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from gateway.context import CallContext, Principal
from gateway.errors import ContextError, PolicyDenied
from gateway.events import LoggingSink
from gateway.memory.access import MemoryAccess
from gateway.memory.builtin import KnowledgeBuiltin, MemoryService
from gateway.memory.embed import HashingEmbedder
from gateway.memory.manager import ContextManager
from gateway.memory.store import CollectionSpec, EdgeStore
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
