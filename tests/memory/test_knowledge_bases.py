"""Listing and removing knowledge bases, and which bases a caller may search, in-process.

Found by mutation testing (group "memory", scripts/mutate.py): `symbi knowledge list/remove`
are tested through the CLI (a subprocess mutmut cannot attribute), so nothing in-process checked
the counts they report, that a listing holds knowledge only (not agent memories in the same
store), that removing a folder takes the files under it and no sibling with the same prefix,
nor the memory object the policy is given for knowledge/search.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from gateway.context import CallContext, Principal
from gateway.events import LoggingSink
from gateway.memory.access import MemoryAccess
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.manager import ContextManager
from gateway.memory.types import AgentContext
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles


def _files(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_listing_counts_files_and_chunks_of_knowledge_only(
    tmp_path: Path, manager: ContextManager
) -> None:
    kb = KnowledgeBases(manager)
    kb.add(
        "one", _files(tmp_path / "one", {"a.md": "# A\n\nalpha\n", "b.md": "# B\n\nbeta\n\n# C\n\ngamma\n"})
    )
    kb.add("two", _files(tmp_path / "two", {"c.md": "# C\n\ndelta\n"}))
    manager.store_context("agent-a", AgentContext("a long-term memory, not knowledge"))
    assert kb.list() == {"one": {"files": 2, "chunks": 3}, "two": {"files": 1, "chunks": 1}}


def test_removing_a_folder_takes_the_files_under_it_only(tmp_path: Path, manager: ContextManager) -> None:
    kb = KnowledgeBases(manager)
    root = _files(
        tmp_path / "kb",
        {
            "docs/a.md": "# A\n\nalpha\n",
            "docs/b.md": "# B\n\nbeta\n\n# C\n\ngamma\n",
            "docs2/c.md": "# C\n\ndelta\n",  # same prefix as docs/, not under it
        },
    )
    kb.add("base", root)
    kb.add("other", _files(tmp_path / "other", {"o.md": "# O\n\nomega\n"}))
    assert kb.remove("base", root / "docs") == 3  # both files' chunks
    assert kb.list() == {"base": {"files": 1, "chunks": 1}, "other": {"files": 1, "chunks": 1}}
    assert kb.remove("base", root / "nothing-here") == 0
    assert kb.remove("base") == 1  # the whole base: its last chunk, not the other base's
    assert kb.list() == {"other": {"files": 1, "chunks": 1}}


def test_the_policy_is_asked_about_each_base_with_the_documented_memory_object(tmp_path: Path) -> None:
    """A real policy that allows knowledge/search only for this exact memory object."""
    (tmp_path / "p.rego").write_text(
        "package symbi\nimport rego.v1\n"
        'want := {"owner": "agent-a", "memory_type": null, "namespace": null, "base": "open"}\n'
        'allow if { input.kind == "knowledge/search"; input.memory == want }\n'
        'decision := {"allow": allow, "reasons": [], "conditions": {}} if allow\n'
        'else := {"allow": false, "reasons": ["no"], "conditions": {}}\n'
    )
    engine = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert engine.load()
    access = MemoryAccess(engine, LoggingSink())
    call = CallContext(
        principal=Principal("alice", roles=("tester",), agent="agent-a"),
        kind="tools/call",
        target="knowledge__search",
        arguments={},
    )
    assert anyio.run(access.allowed_bases, call, ["open", "closed"]) == ["open"]
