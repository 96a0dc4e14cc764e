"""Every third-party module the code imports is declared in pyproject.toml (the HTTP upstream
client once imported ``httpx2`` without it being declared)."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from collections.abc import Mapping
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Installed outside pip's view by a named step: the real OPA engine (Makefile,
# --ignore-requires-python).
NOT_FROM_PYPROJECT = {"opa_bindings"}
# scripts/ modules import their siblings by name (the script's folder is sys.path[0])
FIRST_PARTY = {"gateway", "schemapin", "tests", "bench"} | {p.stem for p in (ROOT / "scripts").glob("*.py")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}


def _imports(*folders: str) -> dict[str, str]:
    """imported module (full dotted name) -> first file importing it."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "node_modules" in path.parts:  # npm packages (node ships an lldb helper script)
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for n in names:
                    found.setdefault(n, str(path.relative_to(ROOT)))
    return {
        m: f
        for m, f in found.items()
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in FIRST_PARTY
    }


def _owners(module: str, dists: Mapping[str, list[str]]) -> set[str]:
    """The distributions that provide ``module``. A namespace package (``opentelemetry``) is
    shared by many distributions: there the one whose files hold the module itself counts."""
    candidates = {_norm(d) for d in dists.get(module.split(".")[0], [])}
    if len(candidates) <= 1:
        return candidates
    spec = importlib.util.find_spec(module)
    if spec is None:
        return set()
    where = spec.origin if spec.origin not in (None, "namespace") else None
    if where is None:  # a namespace package itself: any of its distributions provides it
        return candidates
    located = Path(where).resolve()
    return {
        d
        for d in candidates
        if any(Path(str(f.locate())).resolve() == located for f in distribution(d).files or ())
    }


@pytest.mark.parametrize(
    "folders,extras", [(("gateway", "schemapin"), ()), (("tests", "bench"), ("test", "peers"))]
)
def test_every_import_is_declared(folders: tuple[str, ...], extras: tuple[str, ...]) -> None:
    dists = packages_distributions()
    declared = _declared(*extras)
    missing = []
    for module, where in _imports(*folders).items():
        if module.split(".")[0] in NOT_FROM_PYPROJECT:
            continue
        owners = _owners(module, dists)
        if not owners & declared:
            missing.append(f"{module} ({where}; from {sorted(owners) or 'nothing installed'})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
