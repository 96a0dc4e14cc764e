"""Risk assessment: which tier a piece of code runs in (the seed's ``assess_security_tier``).

The seed scores data sensitivity, code trust, network / filesystem access and external
integrations, and picks tier 1 (Docker) below 0.5, tier 2 (gVisor) above. We keep that
rule, add the light bubblewrap tier for a low score, and put two floors on top:
agent-generated (untrusted) code never runs below gVisor, and the policy's
``sandbox_tier`` condition is never undercut. An unavailable pick is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from gateway.errors import SandboxUnavailable

from .types import TIER_ORDER, TIERS, Tier, ToolNeeds

CodeTrust = Literal["trusted", "reviewed", "untrusted"]
Sensitivity = Literal["public", "internal", "confidential", "restricted"]

_TRUST_RISK = {"trusted": 0.0, "reviewed": 0.2, "untrusted": 0.5}
UNKNOWN_TRUST_RISK = 0.1  # a person's code of unknown review: the default tier is its floor
_SENSITIVITY_RISK = {"public": 0.0, "internal": 0.1, "confidential": 0.3, "restricted": 0.5}
LIGHT_BELOW = 0.25  # bubblewrap is enough below this score
TIER1_BELOW = 0.5  # the seed's threshold between tier 1 (Docker) and tier 2 (gVisor)


def risk_score(needs: ToolNeeds, code_trust: CodeTrust | None, data_sensitivity: Sensitivity) -> float:
    """0 (harmless) .. 1+ (dangerous); the weights follow the seed's risk factors."""
    if code_trust is not None and code_trust not in _TRUST_RISK:
        raise ValueError(f"unknown code_trust {code_trust!r}")
    if data_sensitivity not in _SENSITIVITY_RISK:
        raise ValueError(f"unknown data_sensitivity {data_sensitivity!r}")
    trust = UNKNOWN_TRUST_RISK if code_trust is None else _TRUST_RISK[code_trust]
    score = trust + _SENSITIVITY_RISK[data_sensitivity]
    score += 0.2 if needs.network else 0.0
    score += 0.1 if needs.filesystem else 0.0
    score += 0.2 if needs.external_apis else 0.0
    return score


def _rank(tier: str) -> int:
    if tier not in TIER_ORDER:
        raise SandboxUnavailable(f"unknown sandbox tier {tier!r}")
    return TIER_ORDER.index(tier)


def assess_tier(
    needs: ToolNeeds,
    *,
    code_trust: CodeTrust | None,
    data_sensitivity: Sensitivity,
    policy_min_tier: str | None,
    default_tier: str,
    available: Callable[[str], tuple[bool, str]],
) -> Tier:
    """Pick the tier for one run; raise SandboxUnavailable if that tier cannot run here.

    The risk score picks (``code_trust=None``: unknown review state, scored a little above
    trusted). Then the floors: unknown author -> at least ``default_tier`` (config
    ``security.default_sandbox_tier``); untrusted code -> at least gvisor; never below
    ``policy_min_tier``; never "none".
    ``available(tier) -> (ok, reason)`` is the tiers' own probe (no silent downgrade).
    """
    score = risk_score(needs, code_trust, data_sensitivity)
    pick = "bwrap" if score < LIGHT_BELOW else "docker" if score < TIER1_BELOW else "gvisor"
    floors = [pick, "bwrap"]  # code always runs sandboxed
    if code_trust in (None, "untrusted"):
        floors.append("gvisor" if code_trust == "untrusted" else default_tier)
    if policy_min_tier:
        floors.append(policy_min_tier)
    chosen = max(floors, key=_rank)
    if chosen not in TIERS:
        raise SandboxUnavailable(f"sandbox tier {chosen!r} cannot run code")
    ok, reason = available(chosen)
    if not ok:
        raise SandboxUnavailable(
            f"sandbox tier {chosen!r} is required but unavailable: {reason}", reasons=[reason]
        )
    return chosen  # type: ignore[return-value,unused-ignore]
