"""The MCP Inspector CLI (npm, a real third-party client) against ``symbi mcp`` over stdio."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import NODE_MODULES, SYMBI, peers_config, symbi_env

INSPECTOR = NODE_MODULES / ".bin/mcp-inspector"


def inspect(config: Path, *args: str) -> dict:  # type: ignore[type-arg]
    if not INSPECTOR.exists():
        pytest.fail("MCP Inspector missing: run `make setup`")
    # The inspector's own --config flag is for its config file, so ours goes in the environment.
    proc = subprocess.run(
        [str(INSPECTOR), "--cli", "-e", f"SYMBI_CONFIG_PATH={config}", str(SYMBI), "mcp", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=symbi_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_inspector_lists_tools(tmp_path: Path) -> None:
    out = inspect(peers_config(tmp_path), "--method", "tools/list")
    names = {t["name"] for t in out["tools"]}
    assert {"everything__echo", "fs__list_directory", "time__convert_time"} <= names


def test_inspector_calls_a_tool(tmp_path: Path) -> None:
    out = inspect(
        peers_config(tmp_path),
        "--method",
        "tools/call",
        "--tool-name",
        "everything__get-sum",
        "--tool-arg",
        "a=2",
        "b=3",
    )
    assert out["isError"] is False
    assert "5" in out["content"][0]["text"]


def test_inspector_sees_a_denied_unknown_tool_as_is_error(tmp_path: Path) -> None:
    out = inspect(peers_config(tmp_path), "--method", "tools/call", "--tool-name", "ghost__tool")
    assert out["isError"] is True
