"""Onboarding: bring the MCP servers a team already uses under the gateway.

- ``clients``: where Claude Desktop, Claude Code, VS Code and Cursor keep their MCP server
  lists, and how each format reads (stdio and remote entries).
- ``plan``: what an import would write: valid, unique server names, secrets moved out of the
  config into an environment file (``${VAR}`` references in ``symbi.toml``).
- ``apply``: writes ``[servers.*]`` into ``symbi.toml`` (strict verification: pending until a
  person approves), rewrites a client's config to launch ``symbi mcp`` (the original kept
  beside it, byte for byte, for ``symbi import --undo``).
- ``undo``: ``symbi import --undo`` without losing what the client wrote to its file since.
"""

from gateway.onboard.apply import apply_plan, rewrite_client
from gateway.onboard.clients import ClientFile, FoundServer, find_client_files, read_client_file
from gateway.onboard.plan import ImportPlan, make_plan
from gateway.onboard.undo import undo_client

__all__ = [
    "ClientFile",
    "FoundServer",
    "ImportPlan",
    "apply_plan",
    "find_client_files",
    "make_plan",
    "read_client_file",
    "rewrite_client",
    "undo_client",
]
