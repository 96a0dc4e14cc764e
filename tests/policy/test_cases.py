"""The policy's cases (policies/cases.json): embedded engine vs hand-written expectations,
and the embedded engine vs the real OPA engine (opa-golib-python-bindings) as the oracle."""

from __future__ import annotations

import pytest

from gateway.policy.cases import CASES_MIN, Case, check, decision_dict, deep_merge, load_cases, run_cases
from gateway.policy.engine import EmbeddedEngine
from tests.policy.conftest import CASES, opa_engine

ALL = load_cases(CASES)


def test_enough_cases_of_both_kinds(cases: list[Case]) -> None:
    assert len(cases) >= CASES_MIN
    allows = [c for c in cases if c.expected["allow"]]
    assert len(allows) >= 10 and len(cases) - len(allows) >= 10
    # every expectation is complete, so a changed reason or condition is caught
    assert all(set(c.expected) == {"allow", "reasons", "conditions"} for c in cases)
    # every deny carries a human reason
    assert all(c.expected["reasons"] for c in cases if not c.expected["allow"])


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_embedded_matches_expectation(repo_engine: EmbeddedEngine, case: Case) -> None:
    assert decision_dict(repo_engine.decide(case.input)) == case.expected


def test_real_opa_gives_identical_decisions(repo_engine: EmbeddedEngine, cases: list[Case]) -> None:
    opa = opa_engine()
    diffs = []
    for c in cases:
        ours = decision_dict(repo_engine.decide(c.input))
        theirs = opa.eval_document("symbi.decision", c.input)
        if ours != theirs:
            diffs.append((c.name, ours, theirs))
    assert diffs == []


def test_case_runner_reports_a_wrong_expectation(repo_engine: EmbeddedEngine, cases: list[Case]) -> None:
    flipped = [Case(c.name, c.input, {**c.expected, "allow": not c.expected["allow"]}) for c in cases[:3]]
    assert not any(r.passed for r in run_cases(repo_engine.decide, flipped))


def test_deep_merge_replaces_non_objects() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": None}) == {
        "a": {"b": 3, "c": 2},
        "d": None,
    }
    assert check({"allow": True}, {"allow": True, "reasons": []})
