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


def default_steps(gw: Gateway) -> list[Step]:
    candidates: list[Step | None] = [
        *gw.extra_steps,  # metrics: outermost, so it times everything
        gw.audit_step,  # sees every allow, deny and crash
        ResolveTool(lambda: gw.catalog, gw.upstream_info),
        gw.verify_step,
        ValidateArguments(),
        gw.policy_step,  # decides, then applies its conditions around the dispatch
    ]
    return [s for s in candidates if s is not None]
