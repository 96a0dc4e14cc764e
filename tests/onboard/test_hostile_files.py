"""``symbi import`` in a folder others can write to, and client configs written to break it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.onboard import apply_plan, make_plan, read_client_file, rewrite_client, undo_client
from gateway.onboard.apply import backup_path
from gateway.onboard.clients import file_source
from tests.onboard.conftest import SECRET, write_json


def _shared_client(folder: Path) -> Path:
    return write_json(
        folder / ".mcp.json",
        {"mcpServers": {"notes": {"command": "uvx", "args": ["notes-mcp"], "env": {"NOTES_TOKEN": SECRET}}}},
    )


def test_a_symlink_planted_at_the_temporary_name_is_never_written_through(tmp_path: Path) -> None:
    """Attack: another user who can create files in the project folder plants symlinks at the
    names the import wrote its temporary files under (``.<name>.tmp-<pid>``, for every pid),
    pointing into a file of the victim's. The rewrite wrote the client's original config,
    secret and all, into that file, and the backup became the link (``--undo`` would then put
    the link in place of the config). Now the temporary files have fresh random names."""
    shared, home = tmp_path / "shared", tmp_path / "home"
    home.mkdir()
    client = _shared_client(shared)
    victim = home / ".bashrc"
    victim.write_text("export PATH=$HOME/bin:$PATH\n")
    config = tmp_path / "cfg" / "symbi.toml"
    config.parent.mkdir()
    for planted in (backup_path(client), client, config):
        os.symlink(victim, planted.with_name(f".{planted.name}.tmp-{os.getpid()}"))

    source = file_source(client)
    plan = make_plan(read_client_file(source))
    apply_plan(config, plan, config.with_name("symbi.env"))
    rewrite_client([(source, ["notes"])], "/opt/symbi", config)

    assert victim.read_text() == "export PATH=$HOME/bin:$PATH\n"
    for written in (backup_path(client), client, config):
        assert stat.S_ISREG(os.lstat(written).st_mode), written
    assert SECRET in backup_path(client).read_text()
    assert "symbi" in json.loads(client.read_text())["mcpServers"]


def test_undo_never_puts_a_planted_symlink_in_place_of_the_client_config(tmp_path: Path) -> None:
    """Attack: a symlink planted at the backup's name (``.mcp.json.symbi-backup``) into a config
    of the attacker's; ``symbi import --undo`` moved it over the client's config, which then
    launched the attacker's servers. Now only a regular file of this user is restored."""
    client = _shared_client(tmp_path / "shared")
    theirs = write_json(tmp_path / "theirs.json", {"mcpServers": {"x": {"command": "/tmp/evil"}}})
    os.symlink(theirs, backup_path(client))
    with pytest.raises(ConfigError):
        undo_client(client)
    assert not client.is_symlink() and "notes" in json.loads(client.read_text())["mcpServers"]
    with pytest.raises(ConfigError):  # and a rewrite does not count the link as no backup
        rewrite_client([(file_source(client), ["notes"])], "/opt/symbi", tmp_path / "symbi.toml")
