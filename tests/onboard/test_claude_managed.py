"""``symbi import claude-code`` follows the organisation's managed MCP policy as Claude Code does
(``managed-mcp.json``, ``allowedMcpServers``/``deniedMcpServers``).

The managed folder is a system path (``/etc/claude-code``) a test cannot own, so these tests hand
the import's filter a folder of their own; the reading and the matching are the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli.import_cmd import _approved_in_claude_code
from gateway.errors import ConfigError
from gateway.onboard.claude_managed import ClaudeCodeManaged
from gateway.onboard.clients import ClientFile, FoundServer, read_client_file
from tests.onboard.conftest import write_json

USER_SERVERS = {
    "github": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-github"]},
    "exfil": {"command": "npx", "args": ["-y", "unapproved-package"]},
    "notes": {"type": "http", "url": "https://mcp.example.com/notes"},
    "paste": {"type": "http", "url": "https://paste.evil.example/mcp"},
}


def user_servers(home: Path) -> list[FoundServer]:
    """The user-scope servers of ``~/.claude.json``, read as the import reads them."""
    path = write_json(home / ".claude.json", {"mcpServers": USER_SERVERS})
    return read_client_file(ClientFile("claude-code", path, "user"))


def kept(home: Path, managed: Path) -> set[str]:
    return {
        s.name for s in _approved_in_claude_code(user_servers(home), home, ClaudeCodeManaged(home, managed))
    }


def test_a_server_the_organisation_denies_is_not_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack: the administrator blocked a package by its command and a host by URL; the user's
    own ``~/.claude.json`` still names them, and the import handed them to the gateway to run."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(
        managed / "managed-settings.json",
        {
            "deniedMcpServers": [
                {"serverCommand": ["npx", "-y", "unapproved-package"]},
                {"serverUrl": "https://*.evil.example/*"},
            ]
        },
    )
    assert kept(home, managed) == {"github", "notes"}
    assert "skipped 'exfil'" in capsys.readouterr().err


def test_the_users_own_denylist_counts_and_a_denial_beats_an_allowance(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(managed / "managed-settings.json", {"allowedMcpServers": [{"serverName": "github"}]})
    write_json(home / ".claude" / "settings.json", {"deniedMcpServers": [{"serverName": "github"}]})
    assert kept(home, managed) == set()


def test_an_allowlist_lets_through_only_what_it_names(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(managed / "managed-settings.json", {"allowedMcpServers": [{"serverName": "github"}]})
    assert kept(home, managed) == {"github"}
    write_json(managed / "managed-settings.json", {"allowedMcpServers": []})  # lockdown
    assert kept(home, managed) == set()
    write_json(managed / "managed-settings.json", {"deniedMcpServers": []})  # no allowlist: no limit
    assert kept(home, managed) == set(USER_SERVERS)


def test_with_command_or_url_entries_a_name_alone_is_not_enough(tmp_path: Path) -> None:
    """``exfil`` renamed ``github`` would pass a name entry; with command entries the allowlist
    judges a stdio server by what it runs, and a remote one by its URL."""
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(
        managed / "managed-settings.json",
        {
            "allowedMcpServers": [
                {"serverName": "exfil"},
                {"serverName": "paste"},
                {"serverCommand": ["npx", "-y", "@modelcontextprotocol/server-github"]},
                {"serverUrl": "https://mcp.example.com/*"},
            ]
        },
    )
    assert kept(home, managed) == {"github", "notes"}


def test_the_user_broadens_a_soft_allowlist_unless_only_the_managed_one_counts(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(home / ".claude" / "settings.json", {"allowedMcpServers": [{"serverName": "notes"}]})
    write_json(managed / "managed-settings.json", {"allowedMcpServers": [{"serverName": "github"}]})
    assert kept(home, managed) == {"github", "notes"}
    write_json(
        managed / "managed-settings.json",
        {"allowedMcpServers": [{"serverName": "github"}], "allowManagedMcpServersOnly": True},
    )
    assert kept(home, managed) == {"github"}


def test_a_deployed_managed_mcp_json_means_none_of_the_users_servers_run(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(managed / "managed-mcp.json", {"mcpServers": {}})
    assert kept(home, managed) == set()


def test_other_clients_servers_are_not_judged_by_claude_codes_policy(tmp_path: Path) -> None:
    home, managed = tmp_path / "home", tmp_path / "managed"
    write_json(managed / "managed-settings.json", {"allowedMcpServers": []})
    desktop = write_json(tmp_path / "desktop.json", {"mcpServers": USER_SERVERS})
    found = read_client_file(ClientFile("claude-desktop", desktop, "user"))
    assert len(_approved_in_claude_code(found, home, ClaudeCodeManaged(home, managed))) == len(USER_SERVERS)


@pytest.mark.parametrize(
    "bad",
    [
        '{"deniedMcpServers": {"serverName": "x"}}',
        '{"deniedMcpServers": [{"serverName": "x", "serverCommand": ["x"]}]}',
        '{"deniedMcpServers": [{"serverCommand": "npx -y x"}]}',
        '{"allowedMcpServers": [{"serverUrl": ""}]}',
        "{not json",
    ],
)
def test_an_unreadable_policy_is_an_error_not_a_pass(tmp_path: Path, bad: str) -> None:
    """A policy whose denials cannot be read must not let the servers through."""
    managed = tmp_path / "managed"
    managed.mkdir()
    (managed / "managed-settings.json").write_text(bad)
    with pytest.raises(ConfigError):
        ClaudeCodeManaged(tmp_path / "home", managed)
