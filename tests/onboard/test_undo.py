"""``symbi import --undo`` puts back what the import changed, never what the client wrote since."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.onboard.apply import backup_path, record_path
from tests.onboard.conftest import Machine, write_json
from tests.onboard.test_import import symbi


def apply_claude_code(machine: Machine, tmp_path: Path) -> None:
    run = symbi(
        "import", "claude-code", "--apply", "--config", str(tmp_path / "symbi.toml"), "--symbi", "/opt/s",
        home=machine.home, cwd=machine.project,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


def test_undo_keeps_what_the_client_wrote_to_its_file_after_the_import(
    machine: Machine, tmp_path: Path
) -> None:
    """Attack (on the user's data): Claude Code rewrites ``~/.claude.json`` constantly (history,
    projects, counters); ``--undo`` put back the bytes from before the import, and every change
    since went with them."""
    claude_json = machine.home / ".claude.json"
    before = json.loads(claude_json.read_text())
    apply_claude_code(machine, tmp_path)
    doc = json.loads(claude_json.read_text())
    doc["numStartups"] = 9  # what Claude Code writes as it runs
    doc["projects"]["/elsewhere"] = {"history": [{"display": "later work"}]}
    doc["projects"][str(machine.project)]["history"] = [{"display": "asked after the import"}]
    write_json(claude_json, doc)

    undo = symbi("import", "claude-code", "--undo", home=machine.home, cwd=machine.project)
    assert undo.returncode == 0, undo.stderr
    after = json.loads(claude_json.read_text())
    assert after["numStartups"] == 9 and after["projects"]["/elsewhere"] == doc["projects"]["/elsewhere"]
    here = after["projects"][str(machine.project)]
    assert here["history"] == [{"display": "asked after the import"}]
    assert after["mcpServers"] == before["mcpServers"]  # the import's changes undone
    assert here["mcpServers"] == before["projects"][str(machine.project)]["mcpServers"]
    assert not backup_path(claude_json).exists() and not record_path(claude_json).exists()


def test_an_undo_that_would_lose_a_later_change_is_refused_unless_forced(
    machine: Machine, tmp_path: Path
) -> None:
    claude_json = machine.home / ".claude.json"
    original = claude_json.read_bytes()
    apply_claude_code(machine, tmp_path)
    doc = json.loads(claude_json.read_text())
    doc["mcpServers"]["time"] = {"command": "uvx", "args": ["mcp-server-time", "--local-timezone=UTC"]}
    write_json(claude_json, doc)  # the user set "time" again, differently, since the import
    changed = claude_json.read_bytes()

    undo = symbi("import", "claude-code", "--undo", home=machine.home, cwd=machine.project)
    assert undo.returncode == 2 and str(claude_json) in undo.stderr
    assert claude_json.read_bytes() == changed and backup_path(claude_json).exists()
    forced = symbi("import", "claude-code", "--undo", "--force", home=machine.home, cwd=machine.project)
    assert forced.returncode == 0, forced.stderr
    assert claude_json.read_bytes() == original


def test_an_undo_without_a_record_of_the_import_is_refused_unless_forced(
    machine: Machine, tmp_path: Path
) -> None:
    """A backup left by an earlier version (no record): whether the file changed since cannot be told."""
    claude_json = machine.home / ".claude.json"
    original = claude_json.read_bytes()
    apply_claude_code(machine, tmp_path)
    record_path(claude_json).unlink()
    write_json(claude_json, {**json.loads(claude_json.read_text()), "numStartups": 10})
    assert symbi("import", "claude-code", "--undo", home=machine.home, cwd=machine.project).returncode == 2
    forced = symbi("import", "claude-code", "--undo", "--force", home=machine.home, cwd=machine.project)
    assert forced.returncode == 0 and claude_json.read_bytes() == original
