"""The risk pick: floors hold, unavailable picks are refused, never downgraded."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import SandboxUnavailable
from gateway.sandbox import ToolNeeds, assess_tier, risk_score
from gateway.sandbox.types import Tier


def all_up(tier: str) -> tuple[bool, str]:
    return True, "ok"


def only(*tiers: str):  # type: ignore[no-untyped-def]
    def available(tier: str) -> tuple[bool, str]:
        return (tier in tiers, "up" if tier in tiers else f"{tier} is down in this test")

    return available


def pick(needs: ToolNeeds | None = None, **kw: Any) -> Tier:
    args: dict[str, Any] = {
        "code_trust": "trusted",
        "data_sensitivity": "public",
        "policy_min_tier": None,
        "default_tier": "gvisor",
        "available": all_up,
    }
    args.update(kw)
    return assess_tier(needs or ToolNeeds(), **args)


def test_trusted_harmless_code_gets_the_light_tier() -> None:
    assert pick() == "bwrap"


def test_score_moves_up_the_tiers() -> None:
    assert pick(ToolNeeds(network=True), data_sensitivity="internal") == "docker"
    assert (
        pick(ToolNeeds(network=True, external_apis=("github",)), data_sensitivity="confidential") == "gvisor"
    )
    assert risk_score(ToolNeeds(), "trusted", "public") < risk_score(
        ToolNeeds(filesystem=True), "trusted", "public"
    )


def test_agent_generated_code_is_at_least_gvisor() -> None:
    assert pick(code_trust="untrusted") == "gvisor"
    assert pick(code_trust="untrusted", default_tier="bwrap", policy_min_tier="bwrap") == "gvisor"


def test_policy_floor_is_never_undercut() -> None:
    assert pick(policy_min_tier="docker") == "docker"
    assert pick(policy_min_tier="gvisor") == "gvisor"
    # a higher risk pick wins over a lower policy floor
    assert pick(code_trust="untrusted", policy_min_tier="docker") == "gvisor"


def test_unknown_author_starts_from_the_default_tier() -> None:
    assert pick(code_trust=None, default_tier="docker") == "docker"
    assert pick(code_trust=None, default_tier="none") == "bwrap"  # code never runs unsandboxed


def test_unavailable_pick_is_refused_not_downgraded() -> None:
    with pytest.raises(SandboxUnavailable):
        pick(code_trust="untrusted", available=only("bwrap", "docker"))
    with pytest.raises(SandboxUnavailable):
        pick(policy_min_tier="docker", available=only("bwrap"))


def test_unknown_values_fail_closed() -> None:
    with pytest.raises(SandboxUnavailable):
        pick(policy_min_tier="chroot")
    with pytest.raises(ValueError):
        pick(code_trust="somewhat")
