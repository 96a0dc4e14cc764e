"""Which Claude Code servers an administrator's managed MCP policy lets run.

Claude Code reads an organisation's policy from its managed settings (Linux
``/etc/claude-code/``, macOS ``/Library/Application Support/ClaudeCode/``):

- ``managed-mcp.json``: when deployed, Claude Code starts only the servers it defines, so none
  of the user's own servers run;
- ``managed-settings.json``: ``deniedMcpServers`` (and the user's own, in
  ``~/.claude/settings.json``) blocks, whatever else says; ``allowedMcpServers`` absent lets
  everything through, ``[]`` nothing, otherwise only what it names (the user's list adds to it
  unless ``allowManagedMcpServersOnly``).

An entry names a server by ``serverName``, by ``serverCommand`` (the exact command and
arguments of a stdio server) or by ``serverUrl`` (a remote server's URL, ``*`` any text). When
an allowlist has command entries a stdio server must match one of them, and likewise URL
entries for a remote server; its name alone is not enough then.

The import follows the same rules (the gateway would otherwise start what the organisation
blocked). A policy file that exists but cannot be read is a ``ConfigError``: its denials would
be lost.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.onboard.clients import FoundServer, load_json

ALLOWED = "allowedMcpServers"
DENIED = "deniedMcpServers"
MANAGED_ONLY = "allowManagedMcpServersOnly"
_KINDS = ("serverName", "serverCommand", "serverUrl")


def managed_dir(platform: str = sys.platform) -> Path:
    """Where Claude Code reads its managed settings on this platform."""
    if platform == "darwin":
        return Path("/Library/Application Support/ClaudeCode")
    if platform.startswith("win"):
        return Path("C:/ProgramData/ClaudeCode")
    return Path("/etc/claude-code")


@dataclass(frozen=True)
class _Entry:
    kind: str  # one of _KINDS
    value: str | tuple[str, ...]
    where: str

    def matches(self, s: FoundServer) -> bool:
        if self.kind == "serverName":
            return s.name == self.value
        if self.kind == "serverCommand":
            return s.command is not None and (s.command, *s.args) == self.value
        return s.url is not None and _url_pattern(str(self.value)).fullmatch(s.url) is not None


class ClaudeCodeManaged:
    """The managed policy of this machine (``folder``) with the user's own lists (``home``);
    ``skipped(server)`` says why Claude Code would not start it (None: it would)."""

    def __init__(self, home: Path, folder: Path | None = None) -> None:
        folder = managed_dir() if folder is None else folder
        self._exclusive = folder / "managed-mcp.json" if (folder / "managed-mcp.json").exists() else None
        managed = _read(folder / "managed-settings.json")
        user = _read(home / ".claude" / "settings.json")
        self._denied = _entries(managed, DENIED) + _entries(user, DENIED)
        allowed = _lists(managed, ALLOWED)
        self._allowed_where = managed[0] if managed else ""
        if allowed is not None and not (managed and managed[1].get(MANAGED_ONLY) is True):
            allowed = allowed + (_lists(user, ALLOWED) or [])  # a soft allowlist: the user adds
        self._allowed = allowed

    def skipped(self, s: FoundServer) -> str | None:
        if self._exclusive is not None:
            return f"Claude Code runs only the servers of {self._exclusive} (managed)"
        for e in self._denied:
            if e.matches(s):
                return f"blocked by Claude Code's managed policy ({e.where}: {DENIED})"
        if self._allowed is None:
            return None
        kind = "serverUrl" if s.url is not None else "serverCommand"
        by_kind = [e for e in self._allowed if e.kind == kind]
        candidates = by_kind or [e for e in self._allowed if e.kind == "serverName"]
        if any(e.matches(s) for e in candidates):
            return None
        return f"not in Claude Code's managed allowlist ({self._allowed_where}: {ALLOWED})"


def _read(path: Path) -> tuple[str, dict[str, Any]] | None:
    return (str(path), load_json(path)) if path.exists() else None


def _lists(doc: tuple[str, dict[str, Any]] | None, key: str) -> list[_Entry] | None:
    """The entries under ``key``; None when the key is absent (no restriction)."""
    if doc is None or key not in doc[1]:
        return None
    return _entries(doc, key)


def _entries(doc: tuple[str, dict[str, Any]] | None, key: str) -> list[_Entry]:
    if doc is None or doc[1].get(key) is None:
        return []
    where, value = doc[0], doc[1][key]
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {key} must be a list of server entries")
    return [_entry(item, f"{where} [{key}[{i}]]") for i, item in enumerate(value)]


def _entry(item: object, where: str) -> _Entry:
    named = [k for k in _KINDS if isinstance(item, dict) and k in item]
    if len(named) != 1:
        raise ConfigError(f"{where}: an entry has exactly one of {', '.join(_KINDS)}")
    kind = named[0]
    value = item[kind] if isinstance(item, dict) else None
    if kind == "serverCommand":
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: serverCommand must be a non-empty list of strings")
        return _Entry(kind, tuple(value), where)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {kind} must be a non-empty string")
    return _Entry(kind, value, where)


def _url_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))
