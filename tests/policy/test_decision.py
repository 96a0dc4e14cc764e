"""Decision validation: only the documented shape allows; everything else denies."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.policy.decision import validate_decision

GOOD = {"allow": True, "reasons": [], "conditions": {}}


def test_valid_allow_with_every_known_condition() -> None:
    cond = {
        "sandbox_tier": "gvisor",
        "redact_arguments": ["token", "/headers/authorization"],
        "redact_result": ["password"],
        "max_result_bytes": 1024,
        "rate_limit": 10,
        "audit": "minimal",
    }
    d = validate_decision({**GOOD, "conditions": cond})
    assert d.allow and dict(d.conditions) == cond


@pytest.mark.parametrize(
    "raw",
    [
        None,  # undefined
        "allow",
        True,
        [],
        {"allow": "true", "reasons": [], "conditions": {}},
        {"allow": 1, "reasons": [], "conditions": {}},
        {"reasons": [], "conditions": {}},
        {"allow": True, "reasons": "ok", "conditions": {}},
        {"allow": True, "reasons": [1], "conditions": {}},
        {"allow": True, "reasons": [], "conditions": []},
        {"allow": True, "reasons": [], "conditions": {}, "extra": 1},
        {"allow": True, "reasons": [], "conditions": {"sandbox_teir": "gvisor"}},  # typo: unknown
        {"allow": True, "reasons": [], "conditions": {"sandbox_tier": "none"}},
        {"allow": True, "reasons": [], "conditions": {"sandbox_tier": "microvm"}},
        {"allow": True, "reasons": [], "conditions": {"max_result_bytes": "1kb"}},
        {"allow": True, "reasons": [], "conditions": {"max_result_bytes": -1}},
        {"allow": True, "reasons": [], "conditions": {"max_result_bytes": True}},
        {"allow": True, "reasons": [], "conditions": {"rate_limit": 1.5}},
        {"allow": True, "reasons": [], "conditions": {"redact_arguments": "token"}},
        {"allow": True, "reasons": [], "conditions": {"redact_result": [1]}},
        {"allow": True, "reasons": [], "conditions": {"redact_arguments": ["token", ""]}},  # an empty rule
        {"allow": True, "reasons": ["ok", 2], "conditions": {}},
        {"allow": True, "reasons": [], "conditions": {"audit": "none"}},
    ],
)
def test_malformed_or_unknown_denies_with_a_reason(raw: Any) -> None:
    d = validate_decision(raw)
    assert d.allow is False
    assert d.reasons and all(isinstance(r, str) and r for r in d.reasons)
    assert dict(d.conditions) == {}


def test_deny_without_reason_gets_one() -> None:
    d = validate_decision({"allow": False, "reasons": [], "conditions": {}})
    assert d.allow is False and len(d.reasons) == 1


def test_deny_keeps_policy_reasons() -> None:
    d = validate_decision({"allow": False, "reasons": ["a", "b"], "conditions": {"rate_limit": 1}})
    assert d.reasons == ("a", "b") and dict(d.conditions) == {}


# --- attacks found by mutation testing (scripts/mutate.py)


def test_reasons_and_conditions_are_optional_in_an_allow() -> None:
    d = validate_decision({"allow": True})
    assert d.allow is True and d.reasons == () and dict(d.conditions) == {}


def test_an_allow_keeps_its_reasons() -> None:
    d = validate_decision({"allow": True, "reasons": ["why"], "conditions": {}})
    assert d.allow is True and d.reasons == ("why",)
