"""Revocations applied to calls at once, not only through the next catalogue.

``symbi tools revoke`` writes the tool state; the gateway notices within
``mcp.recheck_interval_s`` and rebuilds the catalogue, which marks the tool revoked. That
rebuild waits for any other in progress, and one upstream's long listing held it for 101 s
while the revoked tool stayed callable. So the set of revoked tools is read as soon as the
approvals change, and the verification step refuses a call to one of them whatever the
catalogue still says.
"""

from __future__ import annotations

import logging

from gateway.context import ToolInfo
from gateway.errors import StateUnavailable
from gateway.verify.state import ToolStates

_logger = logging.getLogger("symbi.verify")

REVOKED_REASON = "revoked by a security team (symbi tools revoke)"


class Revocations:
    """The (upstream, tool name) pairs a security team revoked, as last read."""

    def __init__(self, state: ToolStates) -> None:
        self._state = state
        self.tools: frozenset[tuple[str, str]] = frozenset()

    def reload(self) -> None:
        """Read them again (blocking: from a worker thread). When the state cannot be read the
        last set stays; the rebuild that follows blocks every tool whose approvals it cannot read."""
        try:
            self.tools = frozenset(self._state.revoked())
        except StateUnavailable as e:
            _logger.error("revoked tools not read again: %s", e.message)

    def revoked(self, tool: ToolInfo) -> bool:
        """Whether ``tool`` was revoked (a set lookup; none at all while nothing is revoked)."""
        tools = self.tools
        return bool(tools) and (tool.upstream, tool.original_name) in tools
