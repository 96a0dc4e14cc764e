"""Code tools in tiered sandboxes: bubblewrap (light), Docker (tier 1), gVisor (tier 2).

Public API (what the gateway core calls):

- ``SandboxManager(config)``: the tiers; ``run(tier, request, limits)``, ``limits(**overrides)``,
  ``doctor()``, ``assess_tier(...)``, ``cleanup_orphans()``, ``close()``
- ``SandboxTools(config, manager)``: the built-in ``sandbox`` server (``run_python``, ``run_shell``)
- ``wrap_stdio_command(tier, command, args, env, cwd, *, network, limits, manager)``: launch an stdio
  MCP server inside a tier (started with ``env`` in its environment: values on no command line)
- ``assess_tier(needs, *, code_trust, data_sensitivity, policy_min_tier, default_tier, available)``
- value types: ``SandboxRequest``, ``Limits``, ``SandboxResult``, ``ToolNeeds``

A tier that cannot run raises ``gateway.errors.SandboxUnavailable``: never a silent downgrade.
"""

from .manager import SandboxManager, wrap_stdio_command
from .risk import assess_tier, risk_score
from .tools import SERVER_NAME, SandboxTools, to_call_result
from .types import LABEL, TIERS, Limits, SandboxRequest, SandboxResult, Tier, ToolNeeds

__all__ = [
    "LABEL",
    "SERVER_NAME",
    "TIERS",
    "Limits",
    "SandboxManager",
    "SandboxRequest",
    "SandboxResult",
    "SandboxTools",
    "Tier",
    "ToolNeeds",
    "assess_tier",
    "risk_score",
    "to_call_result",
    "wrap_stdio_command",
]
