"""Client config files written for the tests, each in its client's documented shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.events import LoggingSink
from gateway.onboard.clients import ReadWhenChanged
from gateway.onboard.discovery import Discovery

SECRET = "sk-live-0123456789abcdefSECRET"
BEARER = "Bearer ghp_SECRETTOKEN0123456789abcdef"


@dataclass
class Machine:
    home: Path
    project: Path

    @property
    def claude_desktop(self) -> Path:
        return self.home / ".config/Claude/claude_desktop_config.json"


def write_json(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    m = Machine(tmp_path / "home", tmp_path / "project")
    write_json(
        m.claude_desktop,
        {
            "mcpServers": {
                "filesystem": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                },
                "My Notes (work)!": {"command": "uvx", "args": ["notes-mcp"], "env": {"NOTES_TOKEN": SECRET}},
                "a__b": {"command": "node", "args": ["x.js"]},
                "sandbox": {"command": "node", "args": ["shadow.js"]},
            },
            "globalShortcut": "Ctrl+Space",
        },
    )
    write_json(
        m.project / ".mcp.json",
        {
            "mcpServers": {
                "github": {
                    "type": "http",
                    "url": "https://api.example.test/mcp",
                    "headers": {"Authorization": BEARER},
                },
                "filesystem": {
                    "command": "npx",
                    "args": ["-y", "@modelcontextprotocol/server-filesystem", "."],
                },
            }
        },
    )
    write_json(
        m.home / ".claude.json",
        {
            "numStartups": 3,
            "mcpServers": {
                "time": {"type": "stdio", "command": "uvx", "args": ["mcp-server-time"], "env": {}}
            },
            "projects": {
                str(m.project): {
                    "mcpServers": {"local-db": {"command": "db-mcp", "cwd": "/srv/db"}},
                    # the user approved the project's .mcp.json servers in Claude Code's prompt
                    "enabledMcpjsonServers": ["github", "filesystem"],
                }
            },
        },
    )
    write_json(
        m.project / ".vscode/mcp.json",
        {
            "inputs": [
                {"type": "promptString", "id": "perplexity-key", "description": "API key", "password": True}
            ],
            "servers": {
                "perplexity": {
                    "type": "stdio",
                    "command": "npx",
                    "args": ["-y", "server-perplexity-ask"],
                    "env": {"PERPLEXITY_API_KEY": "${input:perplexity-key}"},
                },
                "legacy": {"type": "sse", "url": "http://127.0.0.1:9/sse"},
            },
        },
    )
    write_json(
        m.home / ".cursor/mcp.json",
        {"mcpServers": {"remote": {"url": "https://mcp.example.test/sse", "headers": {"X-Api-Key": SECRET}}}},
    )
    return m


def discovery(
    state: Path, home: Path, cwd: Path, registry_dir: Path | None = None, files: ReadWhenChanged | None = None
) -> Discovery:
    """A discovery pass's store as the gateway builds it, over these folders (no environment,
    nothing configured yet)."""
    return Discovery(
        state,
        LoggingSink(),
        home=home,
        cwd=cwd,
        environ={},
        registry_dir=registry_dir,
        configured=frozenset(),
        files=files,
    )
