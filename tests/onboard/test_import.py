"""symbi import: every client format, valid unique names, secrets out of symbi.toml, undo."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.model import SERVER_NAME_RE
from gateway.errors import ConfigError
from gateway.onboard.apply import apply_plan
from gateway.onboard.clients import find_client_files, read_client_file
from gateway.onboard.plan import RESERVED, make_plan
from tests.conftest import ROOT
from tests.onboard.conftest import BEARER, SECRET, Machine, write_json


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


def plan_of(tmp_path: Path, doc: dict, name: str = "mcp.json"):  # type: ignore[no-untyped-def,type-arg]
    from gateway.onboard.clients import file_source

    path = write_json(tmp_path / name, doc)
    return make_plan(read_client_file(file_source(path)))


def applied(tmp_path: Path, plan, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    config, env_file = tmp_path / "symbi.toml", tmp_path / "symbi.env"
    apply_plan(config, plan, env_file)
    return config.read_text(), load_config(config, environ or {})


GH = "ghp_" + "A1b2C3d4E5" * 4  # a GitHub token shape (recognisable by value)


def test_secrets_in_args_and_urls_never_land_in_symbi_toml_and_round_trip(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {
            "mcpServers": {
                "a": {"command": "srv", "args": ["--api-key", SECRET, "--verbose", "/data"]},
                "b": {"command": "srv", "args": [f"--token={SECRET}", "--port=8080"]},
                "c": {"command": "docker", "args": ["run", "-e", f"GITHUB_TOKEN={GH}", "img"]},
                "d": {"command": "srv", "args": [GH]},
                "e": {"url": f"https://mcp.example.test/mcp?api_key={SECRET}&mode=fast"},
                "f": {"url": f"https://bob:{SECRET}@mcp.example.test/mcp"},
            }
        },
    )
    text, cfg = applied(tmp_path, plan)
    assert SECRET not in text and GH not in text
    s = cfg.servers
    assert s["a"].args == ("--api-key", SECRET, "--verbose", "/data")
    assert "/data" in text and "--verbose" in text  # what is no secret stays readable
    assert s["b"].args == (f"--token={SECRET}", "--port=8080")
    assert s["c"].args == ("run", "-e", f"GITHUB_TOKEN={GH}", "img")
    assert s["d"].args == (GH,)
    assert s["e"].url == f"https://mcp.example.test/mcp?api_key={SECRET}&mode=fast"
    assert s["f"].url == f"https://bob:{SECRET}@mcp.example.test/mcp"


def test_text_around_references_stays_and_a_secret_beside_one_moves(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        {
            "inputs": [{"type": "promptString", "id": "gh-token", "password": True}],
            "servers": {
                "gh": {
                    "type": "http",
                    "url": "https://api.example.test/mcp/",
                    "headers": {
                        "Authorization": "Bearer ${input:gh-token}",
                        "X-Mixed": f"${{env:USER}}:{SECRET}",
                    },
                },
                "db": {"command": "db-mcp", "env": {"DSN": "postgres://app:${env:DB_PASS}@db:5432/app"}},
            },
        },
    )
    text, cfg = applied(tmp_path, plan, {"GH_TOKEN": "t0k", "USER": "ann", "DB_PASS": "pw"})
    assert 'Authorization = "Bearer ${GH_TOKEN}"' in text  # a template, not a moved literal
    assert SECRET not in text
    assert cfg.servers["gh"].headers == {"Authorization": "Bearer t0k", "X-Mixed": f"ann:{SECRET}"}
    assert cfg.servers["db"].env == {"DSN": "postgres://app:pw@db:5432/app"}
    assert plan.needed == ["DB_PASS", "GH_TOKEN", "USER"]  # told to the user


def test_claude_code_and_vscode_variables_resolve_as_the_client_would(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    vs = plan_of(
        project / ".vscode",
        {
            "servers": {
                "fetch": {
                    "type": "stdio",
                    "command": "uvx",
                    "args": ["${workspaceFolder}/srv"],
                    "cwd": "${workspaceFolder}",
                }
            }
        },
    )
    assert vs.servers[0].table["cwd"] == str(project) and vs.servers[0].table["args"] == [f"{project}/srv"]
    cc = plan_of(
        tmp_path,
        {
            "mcpServers": {
                "fs": {
                    "command": "npx",
                    "args": ["-y", "server-filesystem", "${HOME}/src"],
                    "env": {"LOG": "${LOG_LEVEL:-info}"},
                }
            }
        },
        name="cc.json",
    )
    _, cfg = applied(tmp_path, cc, {"HOME": "/home/ann"})
    assert cfg.servers["fs"].args == ("-y", "server-filesystem", "/home/ann/src")
    assert cfg.servers["fs"].env == {"LOG": "info"}  # the default, as Claude Code would
    with pytest.raises(ConfigError):  # ${HOME} set nowhere: refused, never an empty argument
        load_config(tmp_path / "symbi.toml", {})


@pytest.mark.parametrize(
    ("platform", "environ", "where"),
    [
        ("darwin", {}, "Library/Application Support/Claude/claude_desktop_config.json"),
        ("win32", {"APPDATA": "{home}/Roaming"}, "Roaming/Claude/claude_desktop_config.json"),
        ("linux", {}, ".config/Claude/claude_desktop_config.json"),
    ],
)
def test_claude_desktop_config_is_found_where_each_os_keeps_it(
    tmp_path: Path, platform: str, environ: dict[str, str], where: str
) -> None:
    env = {k: v.format(home=tmp_path) for k, v in environ.items()}
    path = write_json(tmp_path / where, {"mcpServers": {"t": {"command": "x"}}})
    files = find_client_files(tmp_path, tmp_path / "nowhere", env, platform=platform)
    assert [(f.client, f.path) for f in files] == [("claude-desktop", path)]


def test_apply_to_claude_code_rewrites_claude_json_once_for_both_scopes_and_undo_restores(
    machine: Machine, tmp_path: Path
) -> None:
    config = tmp_path / "symbi.toml"
    claude_json, mcp_json = machine.home / ".claude.json", machine.project / ".mcp.json"
    originals = {p: p.read_bytes() for p in (claude_json, mcp_json)}
    applied_ = symbi(
        "import",
        "claude-code",
        "--apply",
        "--config",
        str(config),
        "--symbi",
        "/opt/symbi",
        home=machine.home,
        cwd=machine.project,
    )
    assert applied_.returncode == 0, applied_.stderr
    doc = json.loads(claude_json.read_text())
    assert set(doc["mcpServers"]) == {"symbi"}  # user scope
    assert set(doc["projects"][str(machine.project)]["mcpServers"]) == {"symbi"}  # local scope
    assert doc["numStartups"] == 3  # the rest of Claude Code's file is kept
    assert {"time", "local-db", "github", "filesystem"} <= set(load_config(config, {}).servers)
    undo = symbi("import", "claude-code", "--undo", home=machine.home, cwd=machine.project)
    assert undo.returncode == 0, undo.stderr
    assert {p: p.read_bytes() for p in originals} == originals


def test_an_entry_that_launches_symbi_is_never_imported(machine: Machine, tmp_path: Path) -> None:
    """A client config that already launches the gateway (ours after --apply, or a teammate's
    committed .mcp.json): importing it would make the gateway start itself as its upstream."""
    write_json(
        machine.project / ".mcp.json",
        {
            "mcpServers": {
                "gateway": {"command": "/usr/local/bin/symbi", "args": ["mcp"]},
                "team": {
                    "command": "node",
                    "args": ["x.js"],
                    "env": {"SYMBI_CONFIG_PATH": "/etc/symbi.toml"},
                },
                "real": {"command": "node", "args": ["real.js"]},
            }
        },
    )
    config = tmp_path / "symbi.toml"
    out = symbi(
        "import",
        "--from",
        str(machine.project / ".mcp.json"),
        "--apply",
        "--config",
        str(config),
        home=machine.home,
        cwd=machine.project,
    )
    assert out.returncode == 0, out.stderr
    assert set(load_config(config, {}).servers) == {"real"}


@pytest.mark.parametrize(
    ("entry", "where"),
    [
        ({"fs": {"command": "npx", "args": ["-y", "x\ud800"]}}, "/mcpServers/fs/args/1"),
        ({"fs": {"command": "npx", "env": {"TOKEN": "se\udcffcret"}}}, "/mcpServers/fs/env/TOKEN"),
        ({"f\ud800s": {"command": "npx"}}, "/mcpServers/f\\ud800s"),
    ],
    ids=["arg", "env", "name"],
)
@pytest.mark.parametrize("mode", ["--dry-run", "--apply"])
def test_a_client_config_that_is_not_utf8_is_refused_naming_where(
    tmp_path: Path, entry: dict[str, object], where: str, mode: str
) -> None:
    """Attack: the client's JSON holds the escape \\ud800 (``json.loads`` makes a lone surrogate of
    it). In an argument: a UnicodeEncodeError traceback; in an env value, --apply wrote symbi.env
    and then died; in a name it was renamed silently. Now a usage error naming where, nothing
    written, the client's file unchanged."""
    client = tmp_path / "claude.json"
    client.write_text(json.dumps({"mcpServers": entry}))
    before = client.read_bytes()
    config = tmp_path / "symbi.toml"
    out = symbi(
        "import",
        "claude-desktop",
        "--from",
        str(client),
        "--config",
        str(config),
        mode,
        home=tmp_path,
        cwd=tmp_path,
    )
    assert out.returncode == 2, out.stderr
    assert where in out.stderr and "Traceback" not in out.stderr
    assert not config.exists() and not (tmp_path / "symbi.env").exists() and client.read_bytes() == before


def test_a_plain_http_remote_to_another_host_stays_with_its_client(tmp_path: Path) -> None:
    """Attack (on the config): a client's remote over plain http:// to another host was imported;
    the gateway refuses such a url at load, so the import left a config that does not start, with
    the client already rewritten to launch it: every imported server was lost to the client."""
    home, proj = tmp_path / "home", tmp_path / "proj"
    proj.mkdir()
    servers = {
        "plain": {"type": "http", "url": "http://mcp.example.com/mcp"},
        "tls": {"type": "http", "url": "https://mcp.example.com/mcp"},
        "here": {"type": "http", "url": "http://127.0.0.1:9/mcp"},
    }
    write_json(home / ".claude.json", {"mcpServers": servers})
    config = tmp_path / "symbi.toml"
    run = symbi("import", "claude-code", "--apply", "--config", str(config), home=home, cwd=proj)
    assert run.returncode == 0, run.stderr
    assert set(load_config(config, {}).servers) == {"tls", "here"}  # it loads, without it
    assert "skipped 'plain'" in run.stderr
    left = json.loads((home / ".claude.json").read_text())["mcpServers"]
    assert left["plain"] == servers["plain"]  # still the client's to reach
