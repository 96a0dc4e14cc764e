"""symbi import: every client format, valid unique names, secrets out of symbi.toml, undo."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.model import SERVER_NAME_RE
from gateway.errors import ConfigError
from gateway.onboard import apply_plan, find_client_files, make_plan, read_client_file
from gateway.onboard.plan import RESERVED
from tests.conftest import ROOT
from tests.onboard.conftest import BEARER, SECRET, Machine


def found(m: Machine):  # type: ignore[no-untyped-def]
    files = find_client_files(m.home, m.project, {"HOME": str(m.home)}, platform="linux")
    return files, [s for f in files for s in read_client_file(f)]


def test_finds_every_client_and_scope(machine: Machine) -> None:
    files, servers = found(machine)
    assert {(f.client, f.scope) for f in files} == {
        ("claude-desktop", "user"),
        ("claude-code", "project"),
        ("claude-code", "user"),
        ("claude-code", "local"),
        ("vscode", "project"),
        ("cursor", "user"),
    }
    by = {(s.source.client, s.name): s for s in servers}
    assert by[("claude-code", "github")].transport == "http"
    assert by[("claude-code", "github")].headers == {"Authorization": BEARER}
    assert by[("claude-code", "local-db")].cwd == "/srv/db"
    assert by[("vscode", "legacy")].transport == "sse"
    # VS Code input references stay references, never values
    assert by[("vscode", "perplexity")].env == {"PERPLEXITY_API_KEY": "${PERPLEXITY_KEY}"}
    assert by[("cursor", "remote")].url == "https://mcp.example.test/sse"


def test_names_are_valid_unique_and_never_reserved(machine: Machine) -> None:
    _, servers = found(machine)
    plan = make_plan(servers, taken=["time"])
    names = [s.name for s in plan.servers]
    assert len(names) == len(set(n.lower() for n in names))
    for n in names:
        assert SERVER_NAME_RE.match(n) and "__" not in n and not n.endswith("_"), n
        assert n not in RESERVED
    assert "time" not in names  # taken by the existing config
    assert all(s.table["verification"] == "strict" for s in plan.servers)


def test_secrets_go_to_a_0600_env_file_never_into_symbi_toml(machine: Machine, tmp_path: Path) -> None:
    _, servers = found(machine)
    plan = make_plan(servers)
    config, env_file = tmp_path / "symbi.toml", tmp_path / "symbi.env"
    config.write_text('[gateway]\nname = "team"\n')
    apply_plan(config, plan, env_file)
    text = config.read_text()
    assert SECRET not in text and "ghp_" not in text
    assert 'name = "team"' in text  # what was there is kept
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert SECRET in env_file.read_text()
    cfg = load_config(config, {"PERPLEXITY_KEY": "from-the-environment"})
    notes = next(s for s in plan.servers if s.found.name == "My Notes (work)!")
    assert cfg.servers[notes.name].env == {"NOTES_TOKEN": SECRET}  # resolved from the env file
    github = next(s for s in plan.servers if s.found.name == "github")
    assert cfg.servers[github.name].headers == {"Authorization": BEARER}
    perplexity = next(s for s in plan.servers if s.found.name == "perplexity")
    assert cfg.servers[perplexity.name].env == {"PERPLEXITY_API_KEY": "from-the-environment"}
    assert all(s.verification == "strict" for s in cfg.servers.values())


def test_references_to_nothing_and_readable_env_files_are_refused(machine: Machine, tmp_path: Path) -> None:
    _, servers = found(machine)
    config, env_file = tmp_path / "symbi.toml", tmp_path / "symbi.env"
    apply_plan(config, make_plan(servers), env_file)
    with pytest.raises(ConfigError):  # ${PERPLEXITY_KEY} is nowhere
        load_config(config, {})
    os.chmod(env_file, 0o644)
    with pytest.raises(ConfigError):
        load_config(config, {"PERPLEXITY_KEY": "x"})


def symbi(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def test_cli_dry_run_writes_nothing_and_apply_then_undo_restores_the_bytes(
    machine: Machine, tmp_path: Path
) -> None:
    config = tmp_path / "symbi.toml"
    original = machine.claude_desktop.read_bytes()
    listing = symbi("import", "--config", str(config), home=machine.home, cwd=machine.project)
    assert listing.returncode == 0, listing.stderr
    assert "claude-desktop" in listing.stdout and not config.exists()
    dry = symbi(
        "import",
        "--from",
        str(machine.project / ".mcp.json"),
        "--dry-run",
        "--config",
        str(config),
        home=machine.home,
        cwd=machine.project,
    )
    assert dry.returncode == 0 and not config.exists()

    applied = symbi(
        "import",
        "claude-desktop",
        "--apply",
        "--config",
        str(config),
        "--symbi",
        "/opt/symbi",
        home=machine.home,
        cwd=machine.project,
    )
    assert applied.returncode == 0, applied.stderr
    rewritten = machine.claude_desktop.read_text()
    assert '"/opt/symbi"' in rewritten and "notes-mcp" not in rewritten and "globalShortcut" in rewritten
    assert load_config(config, {}).servers  # what it wrote is a valid config
    written = config.read_bytes()
    again = symbi(
        "import", "claude-desktop", "--apply", "--config", str(config), home=machine.home, cwd=machine.project
    )
    assert again.returncode == 2  # already rewritten: undo first
    assert config.read_bytes() == written  # and nothing was written
    undo = symbi("import", "claude-desktop", "--undo", home=machine.home, cwd=machine.project)
    assert undo.returncode == 0, undo.stderr
    assert machine.claude_desktop.read_bytes() == original
