"""``symbi import`` in a folder others can write to, and client configs written to break it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.onboard import clients
from gateway.onboard.apply import apply_plan, backup_path, rewrite_client
from gateway.onboard.clients import file_source, read_client_file
from gateway.onboard.plan import make_plan
from gateway.onboard.registry import RegistryFolder
from gateway.onboard.undo import undo_client
from tests.conftest import SYMBI, write_config
from tests.onboard.conftest import SECRET, discovery, write_json


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


def test_a_registry_identifier_that_is_an_option_is_never_a_server(tmp_path: Path) -> None:
    """Attack: a ``server.json`` in ``mcp.discovery_registry_dir`` whose npm identifier is
    ``--call=touch PWNED``. Discovery made it ``npx -y --call=touch PWNED`` and, once a person
    approved "weather" (no listing shows the arguments), npx ran the shell command (reproduced
    with a real ``symbi mcp``, discovery on, ``symbi tools approve weather``). Now an identifier
    or version that is not a package name of its registry is skipped with a log line."""
    hostile = {
        "npm": ["--call=touch /tmp/pwned", "-c=id", "https://evil.test/x.tgz", "ok\n--call=x"],
        "pypi": ["--from=git+https://evil.test/x", "a b"],
        "oci": ["--privileged", "-v=/:/host"],
    }
    for kind, idents in hostile.items():
        for i, ident in enumerate(idents):
            write_json(
                tmp_path / f"{kind}-{i}.json",
                {"name": f"example/{kind}{i}", "packages": [{"registryType": kind, "identifier": ident}]},
            )
    write_json(
        tmp_path / "version.json",
        {
            "name": "example/v",
            "packages": [{"registryType": "npm", "identifier": "ok", "version": "--call=x"}],
        },
    )
    write_json(
        tmp_path / "fine.json",
        {
            "name": "example/fine",
            "packages": [{"registryType": "npm", "identifier": "@scope/fine", "version": "1.0.0"}],
        },
    )
    os.mkfifo(tmp_path / "pipe.json")  # never waited on
    deep = tmp_path / "deep.json"
    deep.write_text('{"name": "example/deep", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    assert {name: table for _, name, table in RegistryFolder().servers(tmp_path)[0]} == {
        "fine": {"command": "npx", "args": ["-y", "@scope/fine@1.0.0"]}
    }


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"command": "node", "args": ["${env:HOME"]}, "args[0]"),
        ({"command": "node", "args": ["x", None]}, "args[1]"),
        ({"command": "node", "env": {"TOKEN": 12345}}, "env.TOKEN"),
    ],
)
def test_a_malformed_entry_is_refused_naming_it_and_discovery_goes_on(
    tmp_path: Path, entry: dict[str, object], where: str
) -> None:
    """Attack (a project's ``.mcp.json`` others commit): ``"${env:HOME"`` raised ValueError out
    of ``symbi import`` (a traceback) and out of every discovery pass (nothing else discovered,
    nothing reported removed); ``null`` and numbers were written as the text "None" and "12345"
    (a secret in the env file). Now a ``ConfigError`` naming the file and key; discovery counts
    the file unread and goes on with the others."""
    project, home = tmp_path / "project", tmp_path / "home"
    home.mkdir()
    bad = write_json(project / ".mcp.json", {"mcpServers": {"x": entry}})
    with pytest.raises(ConfigError) as err:
        read_client_file(file_source(bad))
    assert f"mcpServers.x.{where}" in err.value.message
    write_json(
        home / ".config/Claude/claude_desktop_config.json", {"mcpServers": {"good": {"command": "node"}}}
    )
    d = discovery(tmp_path / "discovered.json", home, project)
    added, _ = d.poll()
    assert [x.name for x in added] == ["good"]


def test_a_client_config_nested_thousands_deep_is_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / "mcp.json"
    deep.write_text('{"mcpServers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError):
        file_source(deep)


@pytest.mark.parametrize("folder", ["x\ny", "x\x01y", "x\x7f]\n[servers.evil]\ncommand = 'sh'\n#"])
def test_a_folder_name_with_line_breaks_or_control_characters_still_writes_valid_toml(
    tmp_path: Path, folder: str
) -> None:
    """The client file's path went raw into a TOML comment of symbi.toml: a ValueError out of
    ``symbi import`` (a traceback) for a folder named with a line break or a control character."""
    source = file_source(
        write_json(tmp_path / folder / "mcp.json", {"mcpServers": {"n": {"command": "node"}}})
    )
    config = tmp_path / "symbi.toml"
    apply_plan(config, make_plan(read_client_file(source)), tmp_path / "symbi.env")
    assert set(load_config(config, {}).servers) == {"n"}


def test_a_huge_client_config_is_refused_without_being_read_whole(tmp_path: Path) -> None:
    """Attack (on the gateway's memory): a project's ``.mcp.json`` of gigabytes (here 400 MB,
    sparse) was read whole by ``symbi import`` and by every discovery pass. Raw bytes that
    are not UTF-8 raised UnicodeDecodeError (a traceback). Both are ConfigErrors now."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(400 * 1024 * 1024)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            file_source(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 1024 * 1024
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"mcpServers": {"caf\xe9": {"command": "node"}}}')
    with pytest.raises(ConfigError):
        file_source(latin1)


def test_the_discovery_state_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    """The discovery state holds the discovered servers' env and headers (client configs'
    secrets); it was written under ``.discovered.json.tmp-<pid>``, following a link there."""
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    write_json(
        home / ".config/Claude/claude_desktop_config.json",
        {"mcpServers": {"notes": {"command": "uvx", "env": {"NOTES_TOKEN": SECRET}}}},
    )
    readable = tmp_path / "readable.txt"
    readable.write_text("")
    os.symlink(readable, data / f".discovered.json.tmp-{os.getpid()}")
    d = discovery(data / "discovered.json", home, tmp_path)
    d.poll()
    assert readable.read_text() == "" and not (data / "discovered.json").is_symlink()
    assert stat.S_IMODE(os.stat(data / "discovered.json").st_mode) == 0o600


def test_discover_list_shows_what_approving_a_server_runs_with_secrets_masked(tmp_path: Path) -> None:
    """Before approving a discovered server a person saw its name, status and file, never what
    it runs: the command line is what they are deciding on (a package name, an option). Now
    ``symbi discover list`` shows it, recognisable secrets masked."""
    reg = tmp_path / "registry"
    write_json(
        reg / "weather.json",
        {
            "name": "io.example/weather",
            "packages": [{"registryType": "npm", "identifier": "@ex/weather-mcp"}],
        },
    )
    write_json(
        tmp_path / ".mcp.json",
        {
            "mcpServers": {
                "gh": {"command": "npx", "args": ["-y", "@ex/gh", "--token", "ghp_" + "A1b2C3d4E5" * 4]}
            }
        },
    )
    cfg = write_config(tmp_path, f'[mcp]\ndiscovery_enabled = true\ndiscovery_registry_dir = "{reg}"\n')
    discovery(load_config(cfg, {}).discovered_path, tmp_path / "home", tmp_path, reg).poll()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    out = subprocess.run(
        [str(SYMBI), "discover", "list", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path / "home")},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "launches: npx -y @ex/weather-mcp" in out.stdout
    assert "launches: npx -y @ex/gh --token '***'" in out.stdout and "A1b2C3d4E5" not in out.stdout


def test_a_large_client_file_is_parsed_once_a_change_for_all_its_scopes(tmp_path: Path) -> None:
    """Attack: Claude Code keeps its history in ``~/.claude.json`` (tens of MB on a heavy
    user's machine; a project's ``.mcp.json`` comes with a repository). Discovery parsed it
    four times a pass (two scopes, each ``has_servers`` then ``read_client_file``), every
    ``mcp.recheck_interval_s`` (2 s): at 24 MB a pass took 3.2 s and each parse held the
    interpreter lock 0.94 s, stalling the gateway's event loop most of the time; then
    (session 41) twice a change, once a scope. Now a file is parsed once when it changes, for
    its user and local scopes both, and not again while it does not."""
    home, project = tmp_path / "home", tmp_path / "project"
    history = {"projects": {f"/p/{i}": {"history": ["x" * 200] * 20} for i in range(200)}}
    local = {str(project): {"mcpServers": {"l": {"command": "l-mcp"}}}}
    doc = {**history, "mcpServers": {"a": {"command": "a-mcp"}}}
    user = write_json(home / ".claude.json", {**doc, "projects": {**history["projects"], **local}})
    parsed: list[Path] = []

    def counted(path: Path) -> dict[str, Any]:  # the reader's own parse, counted
        parsed.append(path)
        return clients.load_json(path)

    d = discovery(tmp_path / "discovered.json", home, project, files=clients.ReadWhenChanged(counted))
    assert sorted(x.name for x in d.poll()[0]) == ["a", "l"]  # both scopes read
    assert parsed == [user]  # one parse for the user scope and the local scope (projects[<cwd>])
    for _ in range(3):
        assert d.poll() == ([], [])
    assert parsed == [user]  # unchanged: not parsed again
    doc["mcpServers"] = {"a": {"command": "a-mcp"}, "b": {"command": "b-mcp"}}
    write_json(user, {**doc, "projects": {**history["projects"], **local}})
    assert [x.name for x in d.poll()[0]] == ["b"]  # a change is seen on the next pass
    assert parsed == [user, user]  # once for the change
    user.write_text("{")  # being written: unreadable this pass, nothing removed, not cached
    assert d.poll() == ([], [])
    assert d.poll() == ([], [])
    assert parsed == [user] * 4
    assert {x.status for x in d.entries().values()} == {"quarantined"}
