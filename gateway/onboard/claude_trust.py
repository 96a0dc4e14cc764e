"""Which of a project's ``.mcp.json`` servers the user approved in Claude Code's own prompt.

A project's ``.mcp.json`` comes with the repository (written by others); Claude Code starts
none of its servers until the user approves them, and records the answer:

- ``enabledMcpjsonServers`` / ``disabledMcpjsonServers`` (names), ``enableAllProjectMcpServers``
  (true: every server of the file);
- in ``~/.claude.json`` under ``projects[<folder>]`` (earlier versions), or in the project's
  ``.claude/settings.local.json`` (later ones), or in any settings file
  (``~/.claude/settings.json``, the project's ``.claude/settings.json``).

A project's own files approve nothing until the user trusted the folder in Claude Code
(``projects[<folder>].hasTrustDialogAccepted`` in ``~/.claude.json``): a cloned repository
cannot approve its own servers. A rejection counts wherever it is written. Read so that an
unreadable file never approves: a file that holds answers but cannot be read is a
``ConfigError`` naming it (its rejections would be lost).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.onboard.clients import load_json  # bounded; a malformed file is a ConfigError

ENABLED = "enabledMcpjsonServers"
DISABLED = "disabledMcpjsonServers"
ENABLE_ALL = "enableAllProjectMcpServers"
TRUSTED = "hasTrustDialogAccepted"


@dataclass(frozen=True)
class _Answers:
    where: str
    doc: Mapping[str, Any]

    def names(self, key: str) -> set[str]:
        value = self.doc.get(key)
        if value is None:
            return set()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self.where}: {key} must be a list of names")
        return set(value)


class ClaudeCodeApprovals:
    """The user's answers for one project folder; ``skipped(name)`` says why a server of its
    ``.mcp.json`` is not to be imported (None: approved)."""

    def __init__(self, home: Path, project: Path) -> None:
        state = _project_entry(home / ".claude.json", project)
        user = [a for a in (state, _settings(home / ".claude" / "settings.json")) if a]
        local = [
            a
            for a in (
                _settings(project / ".claude" / "settings.json"),
                _settings(project / ".claude" / "settings.local.json"),
            )
            if a
        ]
        self._trusted = bool(state and state.doc.get(TRUSTED) is True)
        self._rejecting = user + local  # a rejection counts wherever it is written
        self._approving = user + (local if self._trusted else [])
        self._untrusted = [] if self._trusted else local

    def skipped(self, name: str) -> str | None:
        for a in self._rejecting:
            if name in a.names(DISABLED):
                return f"rejected in Claude Code ({a.where}: {DISABLED})"
        for a in self._approving:
            if name in a.names(ENABLED) or a.doc.get(ENABLE_ALL) is True:
                return None
        if any(name in a.names(ENABLED) or a.doc.get(ENABLE_ALL) is True for a in self._untrusted):
            return "approved only by the project's own settings, in a folder not trusted in Claude Code"
        return "never approved in Claude Code"


def _project_entry(path: Path, project: Path) -> _Answers | None:
    doc = _read(path)
    projects = doc.get("projects") if doc else None
    if not isinstance(projects, Mapping):
        return None
    for key in dict.fromkeys((str(project), str(project.resolve()))):
        entry = projects.get(key)
        if isinstance(entry, Mapping):
            return _Answers(f"{path} [projects.{key}]", entry)
    return None


def _settings(path: Path) -> _Answers | None:
    doc = _read(path)
    return _Answers(str(path), doc) if doc is not None else None


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return load_json(path)
