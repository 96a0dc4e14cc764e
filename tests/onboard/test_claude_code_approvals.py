"""``symbi import claude-code`` imports only the project ``.mcp.json`` servers the user approved in
Claude Code's own prompt (its answers in ``~/.claude.json`` and its settings files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.onboard.claude_trust import ClaudeCodeApprovals
from tests.onboard.conftest import write_json
from tests.onboard.test_import import symbi

SERVERS = {
    n: {"command": "node", "args": [f"{n}.js"]} for n in ("approved", "rejected", "unasked", "selfish")
}


def project(tmp_path: Path) -> tuple[Path, Path]:
    home, proj = tmp_path / "home", tmp_path / "repo"
    write_json(proj / ".mcp.json", {"mcpServers": SERVERS})
    return home, proj


def test_only_the_servers_approved_in_claude_code_are_imported_and_the_others_named(tmp_path: Path) -> None:
    """Attack: a cloned repository's ``.mcp.json`` names servers the user rejected (or was never
    asked about) in Claude Code; ``--apply`` imported them and the gateway started them. Its own
    committed ``.claude/settings.json`` approving everything must not count either."""
    home, proj = project(tmp_path)
    write_json(
        home / ".claude.json",
        {
            "projects": {
                str(proj): {
                    "enabledMcpjsonServers": ["approved", "rejected"],
                    "disabledMcpjsonServers": ["rejected"],  # a rejection wins
                }
            }
        },
    )
    write_json(proj / ".claude" / "settings.json", {"enableAllProjectMcpServers": True})  # not trusted
    config = tmp_path / "symbi.toml"
    mcp_json = (proj / ".mcp.json").read_bytes()
    run = symbi(
        "import", "claude-code", "--apply", "--config", str(config), "--symbi", "/opt/s", home=home, cwd=proj
    )
    assert run.returncode == 0, run.stderr
    assert set(load_config(config, {}).servers) == {"approved"}
    for name in ("rejected", "unasked", "selfish"):
        assert f"skipped {name!r}" in run.stderr
    left = json.loads((proj / ".mcp.json").read_text())["mcpServers"]
    assert set(left) == {"rejected", "unasked", "selfish", "symbi"}  # Claude Code still gates them
    undo = symbi("import", "claude-code", "--undo", home=home, cwd=proj)
    assert undo.returncode == 0, undo.stderr
    assert (proj / ".mcp.json").read_bytes() == mcp_json

    forced = tmp_path / "forced.toml"
    run = symbi(
        "import",
        "claude-code",
        "--apply",
        "--include-unapproved",
        "--config",
        str(forced),
        home=home,
        cwd=proj,
    )
    assert run.returncode == 0, run.stderr
    assert set(load_config(forced, {}).servers) == set(SERVERS)


def test_the_projects_own_settings_approve_only_in_a_folder_the_user_trusted(tmp_path: Path) -> None:
    home, proj = project(tmp_path)
    write_json(proj / ".claude" / "settings.local.json", {"enabledMcpjsonServers": ["unasked"]})
    write_json(home / ".claude.json", {"projects": {str(proj): {"hasTrustDialogAccepted": False}}})
    assert ClaudeCodeApprovals(home, proj).skipped("unasked") is not None
    write_json(home / ".claude.json", {"projects": {str(proj): {"hasTrustDialogAccepted": True}}})
    approvals = ClaudeCodeApprovals(home, proj)
    assert approvals.skipped("unasked") is None and approvals.skipped("approved") is not None


def test_a_rejection_anywhere_wins_over_an_approval(tmp_path: Path) -> None:
    home, proj = project(tmp_path)
    write_json(home / ".claude.json", {"projects": {str(proj): {"enableAllProjectMcpServers": True}}})
    write_json(home / ".claude" / "settings.json", {"disabledMcpjsonServers": ["rejected"]})
    approvals = ClaudeCodeApprovals(home, proj)
    assert approvals.skipped("approved") is None and approvals.skipped("rejected") is not None


@pytest.mark.parametrize(
    "bad", ['{"disabledMcpjsonServers": "rejected"}', "{not json", '{"disabledMcpjsonServers": [1]}']
)
def test_an_unreadable_answer_is_an_error_not_an_approval(tmp_path: Path, bad: str) -> None:
    """A settings file whose rejections cannot be read must not let those servers through."""
    home, proj = project(tmp_path)
    write_json(home / ".claude.json", {"projects": {str(proj): {"enableAllProjectMcpServers": True}}})
    (proj / ".claude").mkdir()
    (proj / ".claude" / "settings.local.json").write_text(bad)
    with pytest.raises(ConfigError):
        ClaudeCodeApprovals(home, proj).skipped("rejected")
