"""Turn whatever an engine returned into a ``Decision``, failing closed.

An engine answer is trusted only when it has exactly the documented shape: ``allow`` a bool,
``reasons`` a list of strings, ``conditions`` an object whose keys are all known and whose
values have the right type. Anything else is a deny whose reason says what was wrong, so a
typo in a policy (``sandbox_teir``) can never silently drop a protection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.context import Decision

SANDBOX_TIERS = ("bwrap", "docker", "gvisor")
AUDIT_LEVELS = ("full", "minimal")
# room for what surrounds a tool's payload in its result after the tool (the chain's _meta,
# the content list's JSON): the bus's receives and memory's recalls keep within cap minus this
# (``max_result_bytes``). Here, not in gateway.policy.results, which imports the MCP SDK.
RESULT_ENVELOPE_BYTES = 512


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    """A list of non-empty strings (a loop, not ``all`` over a generator: asked per decision)."""
    if not isinstance(v, list):
        return False
    for x in v:
        if not isinstance(x, str) or not x:
            return False
    return True


def _strings(v: Any) -> bool:
    """A list of strings."""
    if not isinstance(v, list):
        return False
    for x in v:
        if not isinstance(x, str):
            return False
    return True


FIELDS = frozenset({"allow", "reasons", "conditions"})


def _regex_list(v: Any) -> bool:
    if not _str_list(v):
        return False
    try:
        for p in v:
            re.compile(p)
    except re.error:
        return False
    return True


# condition name -> (check, what it must be)
CONDITIONS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sandbox_tier": (lambda v: v in SANDBOX_TIERS, f"one of {', '.join(SANDBOX_TIERS)}"),
    "redact_arguments": (_str_list, "a list of key names or /json/paths"),
    "redact_result": (_str_list, "a list of key names or /json/paths"),
    "max_result_bytes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "rate_limit": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (calls per minute)"),
    "audit": (lambda v: v in AUDIT_LEVELS, f"one of {', '.join(AUDIT_LEVELS)}"),
    # context/write: matches are replaced before a memory is embedded or stored
    "redact_text": (_regex_list, "a list of regular expressions"),
    # the agent runtime: suspend the calling agent (the call is refused), or schedule at a priority
    "suspend_agent": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty reason"),
    "priority": (lambda v: _is_int(v) and 0 <= v <= 9, "an integer 0..9 (9 runs first)"),
}


def deny(reason: str) -> Decision:
    """A deny with one readable reason."""
    return Decision(allow=False, reasons=(reason,), conditions={})


def validate_decision(raw: Any, *, source: str = "policy") -> Decision:
    """Check an engine's raw answer; return it as a ``Decision`` or a deny saying why.

    Never raises. ``None`` (undefined) is a deny.
    """
    if raw is None:
        return deny(f"{source}: the decision is undefined (deny by default)")
    if not isinstance(raw, Mapping):
        return deny(f"{source}: malformed decision: expected an object, got {type(raw).__name__}")
    if not FIELDS.issuperset(raw):
        unknown_keys = sorted(set(raw) - FIELDS)
        return deny(f"{source}: malformed decision: unknown field(s) {', '.join(map(str, unknown_keys))}")
    allow = raw.get("allow")
    if not isinstance(allow, bool):
        return deny(f"{source}: malformed decision: 'allow' must be true or false")
    reasons = raw.get("reasons", [])
    if not _strings(reasons):
        return deny(f"{source}: malformed decision: 'reasons' must be a list of strings")
    conditions = raw.get("conditions", {})
    if not isinstance(conditions, Mapping):
        return deny(f"{source}: malformed decision: 'conditions' must be an object")
    if not allow:
        return Decision(allow=False, reasons=tuple(reasons) or (f"{source}: denied (no reason given)",))
    problems: list[str] = []
    for name, value in conditions.items():
        spec = CONDITIONS.get(name)
        if spec is None:
            problems.append(f"{source}: unknown condition {name!r} (fail closed)")
        elif not spec[0](value):
            problems.append(f"{source}: condition {name!r} must be {spec[1]}, got {value!r}")
    if problems:
        return Decision(allow=False, reasons=tuple(problems))
    return Decision(allow=True, reasons=tuple(reasons), conditions=dict(conditions))
