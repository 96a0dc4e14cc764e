"""What the policy's parity tests share: the repo policy loaded from its text (with its index),
its decision as the gateway evaluates it, real OPA's, and the fields of `facts` (which branch)."""

from __future__ import annotations

import json
from typing import Any

from gateway.policy.cases import load_cases
from gateway.policy.engine import _evaluate
from gateway.policy.loader import PolicyBundle, bundle_from_sources, check_bundle, new_engine
from tests.policy.conftest import CASES, DATA, POLICY, opa_engine

DECISION = "data.symbi.decision"
ERROR = "error"


def load_policy(src: str, data: dict[str, Any], name: str = "policies.rego") -> tuple[PolicyBundle, Any]:
    bundle = check_bundle(bundle_from_sources((name, src), ("data.json", json.dumps(data))), [], DECISION)
    return bundle, new_engine(bundle)


def decide(engine: Any, inp: dict[str, Any]) -> Any:
    d, healthy = _evaluate(engine, DECISION, inp)
    return (
        {"allow": d.allow, "reasons": list(d.reasons), "conditions": dict(d.conditions)} if healthy else ERROR
    )


def opa_decide(opa: Any, inp: dict[str, Any]) -> Any:
    from opa_bindings import OpaError

    try:
        return opa.eval_document("symbi.decision", inp)
    except OpaError:
        return ERROR


def facts_fields(engine: Any, inp: dict[str, Any]) -> set[str] | None:
    """The fields of data.symbi.facts for ``inp`` (None: undefined)."""
    engine.set_input(inp)
    rows = engine.eval_query("x := object.keys(data.symbi.facts)")["result"]
    return set(rows[0]["bindings"]["x"]) if rows else None


def engines_and_cases(kind: str) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The repo policy's engine (with its index), real OPA's (without: the general rules
    decide) and the case file's inputs of ``kind`` (at least one)."""
    data = json.loads(DATA.read_text())
    _, engine = load_policy(POLICY.read_text(), data)
    cases = [c.input for c in load_cases(CASES) if c.input.get("kind") == kind]
    assert cases
    return engine, opa_engine(data=data), cases
