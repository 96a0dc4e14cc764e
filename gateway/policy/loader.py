"""Read, parse and self-test a policy before it may decide anything.

A policy set is a Rego file, an optional JSON data file (loaded at the data root, as
``opa run policy.rego data.json`` does) and the policy's own ``*_test.rego`` files. Loading
parses everything with regorus, runs every ``test_*`` rule the way ``opa test`` does (a test
passes when the rule is true; false, undefined or an error fail it) and evaluates the
decision once on a canary input, because regorus finds unknown functions only when a rule
body is reached. Any problem raises ``PolicyLoadError`` naming ``file:line:column``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regorus  # type: ignore[import-untyped]  # no stubs or py.typed in the wheel

from gateway.custody import read_trusted
from gateway.errors import PolicyLoadError
from gateway.policy.inputkey import InputReads, input_reads
from gateway.policy.lint import unknown_calls
from gateway.textcheck import not_utf8_at, shown

# regorus errors are rustc-style: "--> file:line:col"; a backtrace may follow.
_LOCATION_RE = re.compile(r"-->\s*(\S+?:\d+:\d+)")
_PACKAGE_RE = re.compile(r"^package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)
INDEX_RULE = "data_index"  # see precompute
_INDEX_RULE_RE = re.compile(r"^data_index\b(?=\s*(?::=|=|if\b|\{))", re.MULTILINE)
_TEST_RULE_RE = re.compile(r"^(test_[A-Za-z0-9_]*)\b(?=\s*(?:if\b|:=|=|\{|contains\b|$))", re.MULTILINE)

# A minimal, well-formed input used once per load to reach the decision's rule bodies.
CANARY_INPUT: dict[str, Any] = {
    "action": "call",
    "kind": "tools/call",
    "target": "canary__tool",
    "principal": {"id": "canary", "kind": "user", "roles": [], "claims": {}},
    "agent": {"id": "agt-canary", "name": "canary/canary", "state": "Ready", "priority": 0, "hosted": False},
    "upstream": {"name": "canary", "domain": None, "transport": "stdio"},
    "tool": {
        "name": "canary__tool",
        "original_name": "tool",
        "upstream": "canary",
        "annotations": {},
        "verification": "unverified",
        "key_fingerprint": None,
        "code_tool": False,
    },
    "arguments": {"path": "/", "url": "http://localhost/"},
    "context": {
        "time": "1970-01-01T00:00:00Z",
        "unix": 0,
        "session_id": None,
        "calls_last_minute": 0,
        "calls_last_hour": 0,
        "tool_calls_last_minute": 0,
    },
}

# Without this regorus appends a Rust backtrace to every error when RUST_BACKTRACE is set.
os.environ.setdefault("RUST_LIB_BACKTRACE", "0")


@dataclass(frozen=True)
class PolicyFiles:
    """Where a policy set lives on disk."""

    policy: Path
    data: Path | None = None
    tests: tuple[Path, ...] = ()
    # the tests are the ``*_test.rego`` files found beside the policy (``discover_files``):
    # looked up again for each reload, so one added while serving is run (and one removed is
    # not), as a restart would
    discovered_tests: bool = False

    def watched(self) -> tuple[Path, ...]:
        return (self.policy, *([self.data] if self.data else []), *self.tests)

    def current(self) -> PolicyFiles:
        """These files with the test files found beside the policy now (if they were found so)."""
        if not self.discovered_tests:
            return self
        return dataclasses.replace(self, tests=_find_tests(self.policy))


@dataclass(frozen=True)
class PolicyBundle:
    """A loaded, tested policy: immutable, so threads can build engines from it."""

    modules: tuple[tuple[str, str], ...]  # (file name, Rego source)
    data: dict[str, Any] = field(default_factory=dict)
    digest: str = ""
    # the input paths the policy reads (set by load_checked); None: decisions are not cached
    reads: InputReads | None = None
    # the sources as read, so a replica can publish exactly this policy to the others
    # (``gateway.state.policies``): the data file's (name, raw text) and the test modules
    data_source: tuple[str, str] | None = None
    tests: tuple[tuple[str, str], ...] = ()
    # data documents computed once from the data (see ``precompute``), added to every engine
    precomputed: dict[str, Any] | None = None


@dataclass(frozen=True)
class RegoTestOutcome:
    name: str  # data.<package>.<rule>
    location: str  # file:line:col
    passed: bool
    error: str | None = None


def repo_policy_path() -> Path:
    """The default policy: ``policies.rego`` at the repository root."""
    return Path(__file__).resolve().parents[2] / "policies.rego"


def discover_files(policy: Path | None = None, data: Path | None = None) -> PolicyFiles:
    """Fill in defaults: ``<policy dir>/policies/data.json`` and ``<policy dir>/policies/*_test.rego``."""
    policy = policy or repo_policy_path()
    side = policy.parent / "policies"
    if data is None and (side / "data.json").is_file():
        data = side / "data.json"
    return PolicyFiles(policy=policy, data=data, tests=_find_tests(policy), discovered_tests=True)


def _find_tests(policy: Path) -> tuple[Path, ...]:
    """``<policy dir>/policies/*_test.rego`` and ``<policy dir>/<policy stem>_test.rego``."""
    side = policy.parent / "policies"
    tests = tuple(sorted(side.glob("*_test.rego"))) if side.is_dir() else ()
    return tests + tuple(sorted(p for p in policy.parent.glob(f"{policy.stem}_test.rego") if p not in tests))


def clean_error(exc: BaseException) -> str:
    """The regorus message without a Rust backtrace, on one or a few lines."""
    text = str(exc)
    for marker in ("Stack backtrace", "stack backtrace"):
        text = text.split(marker, 1)[0]
    return text.strip()


def error_location(exc: BaseException) -> str | None:
    m = _LOCATION_RE.search(str(exc))
    return m.group(1) if m else None


def _read_text(path: Path, what: str) -> str:
    if (
        not_utf8_at(str(path)) is not None
    ):  # a found *_test.rego (surrogateescape): regorus takes no such name
        raise PolicyLoadError(f"cannot read {what} {shown(str(path))}: its name is not valid UTF-8")
    try:  # universal newlines, as a text-mode read has always given them
        return read_trusted(path).decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyLoadError(f"cannot read {what} {path}: {e}") from None


def read_bundle(files: PolicyFiles) -> PolicyBundle:
    """Read the policy and data files (no evaluation yet).

    Raises:
        PolicyLoadError: a file is missing, unreadable or empty, or the data is not a JSON object.
    """
    src = _read_text(files.policy, "policy")
    data = (str(files.data), _read_text(files.data, "policy data")) if files.data is not None else None
    return bundle_from_sources((str(files.policy), src), data)


def policy_digest(src: str, data_raw: str | None) -> str:
    """SHA-256 over the policy text and the data file's raw text: what a load records."""
    h = hashlib.sha256(src.encode())
    if data_raw is not None:
        h.update(b"\0" + data_raw.encode())
    return h.hexdigest()


def bundle_from_sources(policy: tuple[str, str], data: tuple[str, str] | None = None) -> PolicyBundle:
    """A bundle from (name, text) of the policy and of its data file (files or a broadcast).

    Raises:
        PolicyLoadError: the policy is empty, or the data is not a JSON object.
    """
    name, src = policy
    if not src.strip():
        raise PolicyLoadError(f"policy file {name} is empty")
    loaded: dict[str, Any] = {}
    if data is not None:
        data_name, raw = data
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PolicyLoadError(
                f"policy data is not JSON: {e.msg}", location=f"{data_name}:{e.lineno}:{e.colno}"
            ) from None
        if not isinstance(doc, dict):
            raise PolicyLoadError(f"policy data {data_name} must be a JSON object")
        bad = not_utf8_at(doc)
        if bad is not None:  # regorus would crash the process on it (gateway/textcheck.py)
            raise PolicyLoadError(f"policy data {data_name}: the text at {bad} is not valid UTF-8")
        loaded = doc
    return PolicyBundle(
        modules=((name, src),),
        data=loaded,
        digest=policy_digest(src, data[1] if data is not None else None),
        data_source=data,
    )


def new_engine(bundle: PolicyBundle, extra_modules: Iterable[tuple[str, str]] = ()) -> regorus.Engine:
    """A fresh regorus engine for the calling thread (engines are thread-bound).

    Raises:
        PolicyLoadError: a module does not parse (location = file:line:col).
    """
    engine = regorus.Engine()
    engine.set_gather_prints(True)  # print() must never reach stdout: it is the stdio protocol
    for name, src in (*bundle.modules, *extra_modules):
        try:
            engine.add_policy(name, src)
        except BaseException as e:  # regorus may panic (BaseException); fail closed
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise PolicyLoadError(
                clean_error(e).splitlines()[-1], location=error_location(e) or name
            ) from None
    for doc in (bundle.data, bundle.precomputed):
        if not doc:
            continue
        try:
            engine.add_data(doc)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise PolicyLoadError(f"policy data rejected: {clean_error(e)}") from None
    return engine


def _defines_index(src: str, package: str) -> bool:
    pkg = _PACKAGE_RE.search(src)
    return pkg is not None and pkg.group(1) == package and _INDEX_RULE_RE.search(src) is not None


def precompute(bundle: PolicyBundle, decision: str) -> dict[str, Any] | None:
    """``{"precomputed": {<package path>: {"data_index": value}}}`` when the decision's
    package defines a ``data_index`` rule (a function of the data alone), else None.

    The policy reads the value back from ``data.precomputed.<package>.data_index`` instead of
    evaluating the rule on every decision (the default policy indexes its glob patterns so).
    The value is evaluated once here, with no input and with the canary input: both must agree.

    Raises:
        PolicyLoadError: the rule fails to evaluate or reads the input.
    """
    package = decision.rsplit(".", 1)[0]  # data.symbi
    parts = package.split(".")[1:]
    if not parts or not any(_defines_index(src, ".".join(parts)) for _, src in bundle.modules):
        return None
    rule = f"{package}.{INDEX_RULE}"
    values = []
    for inp in (None, CANARY_INPUT):
        engine = new_engine(bundle)
        try:
            if inp is not None:
                engine.set_input(inp)
            values.append(engine.eval_rule(rule))
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise PolicyLoadError(
                f"{rule} fails to evaluate: {clean_error(e).splitlines()[-1]}", location=error_location(e)
            ) from None
    if values[0] != values[1]:
        raise PolicyLoadError(f"{rule} must be a function of the data alone: it reads the input")
    if values[0] is None:
        return None
    doc: dict[str, Any] = {INDEX_RULE: values[0]}
    for part in reversed(parts):
        doc = {part: doc}
    return {"precomputed": doc}


def find_test_rules(modules: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``[(data.pkg.test_x, file:line:col)]`` for every ``test_*`` rule, in file order."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, src in modules:
        pkg = _PACKAGE_RE.search(src)
        if not pkg:
            continue
        for m in _TEST_RULE_RE.finditer(src):
            ref = f"data.{pkg.group(1)}.{m.group(1)}"
            if ref in seen:
                continue
            seen.add(ref)
            line = src.count("\n", 0, m.start()) + 1
            found.append((ref, f"{name}:{line}:1"))
    return found


def read_test_modules(paths: Iterable[Path]) -> list[tuple[str, str]]:
    return [(str(p), _read_text(p, "policy test")) for p in paths]


def run_tests(bundle: PolicyBundle, test_modules: Sequence[tuple[str, str]]) -> list[RegoTestOutcome]:
    """Run every ``test_*`` rule of the policy and test modules, like ``opa test``.

    Raises:
        PolicyLoadError: a module does not parse.
    """
    engine = new_engine(bundle, test_modules)
    outcomes: list[RegoTestOutcome] = []
    for ref, where in find_test_rules((*bundle.modules, *test_modules)):
        try:
            value = engine.eval_rule(ref)
        except BaseException as e:
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            outcomes.append(RegoTestOutcome(ref, error_location(e) or where, False, clean_error(e)))
            continue
        outcomes.append(
            RegoTestOutcome(ref, where, value is True, None if value is True else f"got {value!r}")
        )
    return outcomes


def load_checked(files: PolicyFiles, decision: str = "data.symbi.decision") -> PolicyBundle:
    """Read, parse, self-test and canary-evaluate a policy set; return it only if all pass.

    Raises:
        PolicyLoadError: naming file:line:column where one is known.
    """
    return check_bundle(read_bundle(files), read_test_modules(files.tests), decision)


def check_bundle(
    bundle: PolicyBundle, tests: Sequence[tuple[str, str]], decision: str = "data.symbi.decision"
) -> PolicyBundle:
    """Parse, self-test and canary-evaluate a bundle (read from files or received from another
    replica); return it, with its tests and the input paths it reads, only if all pass.

    Raises:
        PolicyLoadError: naming file:line:column where one is known.
    """
    outcomes = run_tests(bundle, tests)
    failed = [o for o in outcomes if not o.passed]
    if failed:
        first = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise PolicyLoadError(
            f"policy test {first.name} failed: {first.error}{more}", location=first.location
        )
    engine = new_engine(bundle)
    ast = engine.get_ast_as_json()
    unknown = unknown_calls(ast)
    if unknown:
        name, where = unknown[0]
        raise PolicyLoadError(
            f"function {name} is not a builtin both regorus and OPA provide", location=where
        )
    try:
        engine.set_input(CANARY_INPUT)
        engine.eval_rule(decision)
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise PolicyLoadError(
            f"{decision} fails to evaluate: {clean_error(e).splitlines()[-1]}", location=error_location(e)
        ) from None
    return dataclasses.replace(
        bundle, reads=input_reads(ast)[0], tests=tuple(tests), precomputed=precompute(bundle, decision)
    )
