"""What scripts/mutate.py's modules share: the paths of the tree and its reports, and a
mutation group (the files mutmut mutates and the in-process tests that cover them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT_JSON = ROOT / "reports" / "mutation.json"
REPORT_MD = ROOT / "reports" / "mutation.md"
EQUIVALENTS = ROOT / "scripts" / "mutation-equivalents.toml"
# Tests look for these next to the tree (ROOT/.venv etc.); mutmut runs pytest in mutants/.
LINKED = (".venv", ".venv-schemapin-ref", "node_modules")
ALSO_COPY = ["scripts", "policies", "policies.rego", "examples"]


@dataclass(frozen=True)
class Group:
    name: str
    mutate: tuple[str, ...]  # files or globs ending in * (mutmut's only_mutate)
    tests: tuple[str, ...]  # pytest paths/node ids that call the code in-process
    note: str = ""
    # mutant-name patterns (fnmatch, as `mutmut run` takes them): only these functions' mutants
    # run and are reported; the group's other functions are out of its scope, not "not checked"
    only: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # set for the group's run (e.g. fail, not skip, a broken tier)
    # mutmut's per-mutant time limit is (the tests' time + 1 s) x this (its default 15): lower for
    # a group whose slow mutants are performance regressions (a defeated cache), detected as timeouts
    timeout_multiplier: float | None = None
