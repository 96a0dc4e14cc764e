"""Fixtures for the policy tests: the repo policy, copies of it to edit, the OPA oracle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.policy.cases import Case, load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles, discover_files

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "policies.rego"
DATA = REPO / "policies" / "data.json"
TESTS = REPO / "policies" / "policies_test.rego"
CASES = REPO / "policies" / "cases.json"


def opa_engine(policy_src: str | None = None, data: dict[str, Any] | None = None) -> Any:
    """The real OPA engine (v1.x, Go, from opa-golib-python-bindings) with the repo policy."""
    from opa_bindings import OpaEngine

    eng = OpaEngine()
    eng.add_policy("policies.rego", policy_src if policy_src is not None else POLICY.read_text())
    eng.add_data(data if data is not None else json.loads(DATA.read_text()))
    return eng


@pytest.fixture(scope="session")
def cases() -> list[Case]:
    return load_cases(CASES)


@pytest.fixture(scope="session")
def repo_engine() -> EmbeddedEngine:
    eng = EmbeddedEngine(discover_files())
    assert eng.load(), "the repo's policies.rego must load"
    return eng


@pytest.fixture
def policy_copy(tmp_path: Path) -> PolicyFiles:
    """The repo policy, data and tests copied into tmp_path (same layout), free to edit."""
    (tmp_path / "policies").mkdir()
    shutil.copy(POLICY, tmp_path / "policies.rego")
    shutil.copy(DATA, tmp_path / "policies" / "data.json")
    shutil.copy(TESTS, tmp_path / "policies" / "policies_test.rego")
    files = discover_files(tmp_path / "policies.rego")
    assert files.data is not None and files.tests
    return files
