"""Case files: input -> expected decision, for ``symbi policy test --cases`` and the tests.

Format (``policies/cases.json``)::

    {"base": {...input...},
     "cases": [{"name": "...", "input": {...overrides...}, "expected": {"allow": ..., "reasons": [...], "conditions": {...}}}]}

A case's input is ``base`` deep-merged with its overrides (objects merge key by key; any
other value, including null, replaces). Only the keys present in ``expected`` are compared.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.context import Decision
from gateway.errors import PolicyLoadError

CASES_MIN = 30  # the issue asks for at least this many input -> decision cases


@dataclass(frozen=True)
class Case:
    name: str
    input: dict[str, Any]
    expected: dict[str, Any]


@dataclass(frozen=True)
class CaseResult:
    case: Case
    actual: dict[str, Any]
    passed: bool


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_cases(path: Path) -> list[Case]:
    """Read a case file. Raises ``PolicyLoadError`` (with file:line:col for bad JSON)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PolicyLoadError(f"cannot read cases file {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise PolicyLoadError(
            f"cases file is not JSON: {e.msg}", location=f"{path}:{e.lineno}:{e.colno}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cases"), list):
        raise PolicyLoadError(f"cases file {path} must be an object with a 'cases' list")
    base = doc.get("base", {})
    cases = []
    for i, c in enumerate(doc["cases"]):
        if not isinstance(c, dict) or not isinstance(c.get("expected"), dict):
            raise PolicyLoadError(f"case #{i} in {path} needs an 'expected' object")
        cases.append(
            Case(str(c.get("name", f"case {i}")), deep_merge(base, c.get("input", {})), c["expected"])
        )
    return cases


def decision_dict(d: Decision) -> dict[str, Any]:
    return {"allow": d.allow, "reasons": list(d.reasons), "conditions": dict(d.conditions)}


def check(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> bool:
    return all(actual.get(k) == v for k, v in expected.items())


def run_cases(decide: Callable[[dict[str, Any]], Decision], cases: list[Case]) -> list[CaseResult]:
    out = []
    for c in cases:
        actual = decision_dict(decide(c.input))
        out.append(CaseResult(c, actual, check(c.expected, actual)))
    return out
