"""The decision cache's two stores: a session's listings (keyed on its agent's id, new per
session) never push out another decision, and no two inputs that differ in a part the policy
reads ever share a cached decision, whichever store holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles

# reads the tool's name and the agent: whole (``== null``), its state and its id
POLICY = """package symbi
import rego.v1
default ok := false
ok if {
    input.tool.name == "echo"
    input.agent == null
}
ok if {
    input.tool.name == "echo"
    input.agent.state == "running"
    input.agent.id != "agent-banned"
}
decision := {"allow": ok, "reasons": [], "conditions": {}}
"""


def _engine(tmp_path: Path, cache_entries: int) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(POLICY)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"), cache_entries=cache_entries)
    assert eng.load()
    return eng


def _listing(agent: dict[str, Any] | None, tool: str = "echo") -> dict[str, Any]:
    return {"action": "list", "kind": "tools/call", "tool": {"name": tool}, "agent": agent}


def _agent(n: int, state: str = "running") -> dict[str, Any]:
    return {"id": f"agent-{n}", "name": None, "state": state, "priority": 0, "hosted": False}


def test_sessions_listings_never_push_out_another_decision(tmp_path: Path) -> None:
    eng = _engine(tmp_path, cache_entries=2)
    shared = _listing(None)  # no agent: the same key for every caller
    assert eng.decide(shared).allow is True
    for n in range(5):  # five sessions, each listing once with its new agent
        assert eng.decide(_listing(_agent(n))).allow is True
    hits = eng.cache_hits
    assert eng.decide(shared).allow is True
    assert eng.cache_hits == hits + 1  # still cached: the sessions' entries went elsewhere
    # a session's own listing is still answered from the cache when asked again (its call)
    assert eng.decide(_listing(_agent(4))).allow is True and eng.cache_hits == hits + 2


def test_inputs_differing_in_a_part_the_policy_reads_never_share_a_cached_decision(tmp_path: Path) -> None:
    eng = _engine(tmp_path, cache_entries=64)
    allowed = _listing(_agent(1))
    for _ in range(3):  # cached, then answered from the cache
        assert eng.decide(allowed).allow is True
    assert eng.cache_hits == 2
    differing = [
        _listing(_agent(1, state="paused")),  # the agent's state
        _listing({**_agent(1), "id": "agent-banned"}),  # its id
        _listing(_agent(1), tool="rm"),  # the tool
        _listing("agent-1"),  # type: ignore[arg-type]  # a bare id where the object was
        {**_listing(_agent(1)), "tool": None},  # the tool missing
    ]
    for inp in differing:
        for _ in range(2):  # neither from the allowed entry nor, the second time, from its own
            assert eng.decide(inp).allow is False, inp
    # a part the policy does not read is not in the key: the allowed entry answers
    hits = eng.cache_hits
    assert eng.decide({**_listing(_agent(1)), "memory": {"x": 1}}).allow is True  # (not read)
    assert eng.cache_hits == hits + 1


# errors for the tool "boom" (object.get of null): a failed evaluation
FAILING = """package symbi
import rego.v1
decision := {"allow": input.tool.name == "echo", "reasons": [], "conditions": {}} if input.tool.name != "boom"
decision := {"allow": false, "reasons": [r], "conditions": {}} if {
    input.tool.name == "boom"
    r := object.get(input.tool.opts, "a", "b")
}
"""


def test_an_input_that_fails_evaluation_leaves_the_cache_to_the_others(tmp_path: Path) -> None:
    # the failed engine is replaced; the decisions the same policy made stay cached (dropping
    # them let any caller whose input errors empty the cache of everyone on that thread)
    (tmp_path / "p.rego").write_text(FAILING)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"), cache_entries=64)
    assert eng.load()
    echo = _listing(None)
    assert eng.decide(echo).allow is True
    boom = {**_listing(None, "boom"), "tool": {"name": "boom", "opts": None}}
    failed = eng.decide(boom)
    assert failed.allow is False and failed.reasons  # fails closed, said
    hits = eng.cache_hits
    assert eng.decide(echo).allow is True
    assert eng.cache_hits == hits + 1
    assert eng.decide(boom).allow is False  # a failed evaluation is never kept: evaluated again
    assert eng.cache_hits == hits + 1
