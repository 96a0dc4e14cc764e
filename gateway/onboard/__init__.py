"""Onboarding: bring the MCP servers a team already uses under the gateway.

- ``clients``: where Claude Desktop, Claude Code, VS Code and Cursor keep their MCP server
  lists, and how each format reads (stdio and remote entries).
- ``plan``: what an import would write: valid, unique server names, secrets moved out of the
  config into an environment file (``${VAR}`` references in ``symbi.toml``).
- ``apply``: writes ``[servers.*]`` into ``symbi.toml`` (strict verification: pending until a
  person approves), rewrites a client's config to launch ``symbi mcp`` (the original kept
  beside it, byte for byte, for ``symbi import --undo``).
- ``undo``: ``symbi import --undo`` without losing what the client wrote to its file since.

Nothing is imported here: ``symbi import``'s parse reads ``clients`` alone (light), and the
others load the config models as the command runs.
"""
