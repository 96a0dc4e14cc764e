"""The steps of the call chain, and the one list that orders them.

Outermost first: audit sees every allow, deny and crash; then the tool is resolved, its
definition verified, its arguments validated, and the policy decides (and applies its
conditions) before the call is dispatched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.chain import Step
from gateway.steps.arguments import ValidateArguments
from gateway.steps.resolve import ResolveTool

if TYPE_CHECKING:
    from gateway.app import Gateway


def default_steps(gw: "Gateway") -> list[Step]:
    steps: list[Step] = []
    audit = getattr(gw, "audit_step", None)
    if audit is not None:
        steps.append(audit)
    steps.append(ResolveTool(lambda: gw.catalog, gw.upstream_info))
    verify = getattr(gw, "verify_step", None)
    if verify is not None:
        steps.append(verify)
    steps.append(ValidateArguments())
    policy = getattr(gw, "policy_step", None)
    if policy is not None:
        steps.append(policy)
    return steps
