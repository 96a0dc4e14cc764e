"""Claude Code's managed MCP policy applied to discovered servers (``gateway.onboard.discovery``):
a server found in a Claude Code config follows its administrator's policy as ``symbi import
claude-code`` does (``gateway.onboard.claude_managed`` reads it). A discovery pass asks it which
approved servers not to start; an approval asks it whether to refuse."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError
from gateway.onboard.claude_managed import ClaudeCodeManaged
from gateway.onboard.clients import ClientFile, FoundServer

if TYPE_CHECKING:  # discovery imports this module: its entries' type only, for the checker
    from gateway.onboard.discovery import Discovered


class ManagedPolicy:
    """Claude Code's managed MCP policy as one discovery pass (or one approval) sees it: read
    once, on first need, for each home the servers were found through (its user's own lists);
    a policy that cannot be read blocks every Claude Code server (its denials would be lost)."""

    def __init__(self, home: Path, folder: Path | None) -> None:
        self._home, self._folder = home, folder  # folder None: this system's managed settings
        self._read: dict[Path, ClaudeCodeManaged | str] = {}

    def refusal(self, d: Discovered) -> str | None:
        """Why the policy blocks ``d`` (None: it does not, or ``d`` is not Claude Code's)."""
        if not d.from_claude_code():
            return None
        policy = self._policy(Path(d.home) if d.home else self._home)
        if isinstance(policy, str):
            return policy
        args = d.table.get("args")
        server = FoundServer(
            ClientFile("claude-code", Path(d.source), "user"),
            d.original_name,
            command=d.table.get("command"),
            args=tuple(str(a) for a in args) if isinstance(args, list) else (),
            url=d.table.get("url"),
        )
        return policy.skipped(server)

    def refusals(self, entries: list[Discovered]) -> dict[str, str]:
        """The reason of each of ``entries`` the policy blocks, by name."""
        return {d.name: why for d in entries if (why := self.refusal(d)) is not None}

    def _policy(self, home: Path) -> ClaudeCodeManaged | str:
        if home not in self._read:
            try:
                self._read[home] = ClaudeCodeManaged(home, self._folder)
            except ConfigError as e:
                self._read[home] = f"Claude Code's managed MCP policy cannot be read ({e.message})"
            except OSError as e:  # its folder not ours to look into
                self._read[home] = (
                    f"Claude Code's managed MCP policy cannot be read ({type(e).__name__}: {e})"
                )
        return self._read[home]
