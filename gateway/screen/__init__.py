"""Screening of tool, resource and prompt definitions for poisoning (``symbi scan``, and on
every catalogue refresh): text addressed to the model instead of the user.

The result is data for the policy (``input.tool.screening``) and the audit log; the default
policy blocks high-severity findings under strict and tofu verification and marks them under
warn. Rules are in ``gateway.screen.rules``.
"""

from gateway.screen.screener import Finding, Screener, Screening, screen_definition

__all__ = ["Finding", "Screener", "Screening", "screen_definition"]
