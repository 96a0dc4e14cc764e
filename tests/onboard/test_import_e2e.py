"""The whole onboarding, as a user would do it: a Claude Desktop config with a real npm
server is imported, the rewritten config is launched as Claude Desktop would launch it (the
MCP Inspector CLI with that command and args), its tools are pending until a security team
approves them, then they are listed and callable through the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.conftest import EVERYTHING_JS, NODE_MODULES, POLICY, ROOT, SYMBI, TEST_POLICY_DATA, require_peers
from tests.onboard.conftest import SECRET, write_json
from tests.verify.test_gateway_verification import org_key

INSPECTOR = NODE_MODULES / ".bin/mcp-inspector"
pytestmark = pytest.mark.npm


def run(*cmd: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBI_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=120, cwd=home)


def inspector(entry: dict[str, Any], home: Path, *args: str) -> dict[str, Any]:
    env = [f"{k}={v}" for k, v in entry["env"].items()]
    p = run(
        str(INSPECTOR),
        "--cli",
        *[x for e in env for x in ("-e", e)],
        str(entry["command"]),
        *map(str, entry["args"]),
        *args,
        home=home,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    doc: dict[str, Any] = json.loads(p.stdout)
    return doc


def test_claude_desktop_import_launches_through_the_gateway(tmp_path: Path) -> None:
    require_peers()
    home = tmp_path / "home"
    desktop = write_json(
        home / ".config/Claude/claude_desktop_config.json",
        {
            "mcpServers": {
                "everything": {
                    "command": "node",
                    "args": [str(EVERYTHING_JS), "stdio"],
                    "env": {"EVERYTHING_TOKEN": SECRET},
                }
            }
        },
    )
    org_key(tmp_path)
    config = tmp_path / "symbi.toml"
    config.write_text(
        f'[gateway]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[policy]\npath = "{POLICY}"\ndata = "{TEST_POLICY_DATA}"\n'
        f'[mcp]\nrecheck_interval_s = 0.2\norg_keys = ["{tmp_path / "org.pub.pem"}"]\n'
        "[sandbox]\ncode_tools = false\n"
    )

    imported = run(
        sys.executable,
        "-m",
        "gateway",
        "import",
        "claude-desktop",
        "--apply",
        "--config",
        str(config),
        "--symbi",
        str(SYMBI),
        home=home,
    )
    assert imported.returncode == 0, imported.stderr
    assert SECRET not in config.read_text()
    entry = json.loads(desktop.read_text())["mcpServers"]["symbi"]

    # launched as Claude Desktop would: the imported server's tools are pending (strict)
    listed = inspector(entry, home, "--method", "tools/list")
    assert not [t for t in listed["tools"] if t["name"].startswith("everything__")]
    pending = json.loads(
        run(str(SYMBI), "tools", "list", "--config", str(config), "--json", home=home).stdout
    )
    assert "everything__echo" in {t["tool"] for t in pending}

    # a security team approves echo through a signed manifest
    doc = tomlkit.parse(config.read_text())
    doc["servers"]["everything"]["approved"] = str(tmp_path / "approved-everything.json")
    config.write_text(tomlkit.dumps(doc))
    ok = run(
        str(SYMBI),
        "tools",
        "approve",
        "everything__echo",
        "--hash",  # the definition reviewed (symbi tools diff prints it)
        next(t for t in pending if t["tool"] == "everything__echo")["definition_hash"],
        "--key",
        str(tmp_path / "org.pem"),
        "--config",
        str(config),
        home=home,
    )
    assert ok.returncode == 0, ok.stderr
    listed = inspector(entry, home, "--method", "tools/list")
    assert "everything__echo" in {t["name"] for t in listed["tools"]}
    called = inspector(
        entry, home, "--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=hi"
    )
    assert called["content"][0]["text"] == "Echo: hi"
