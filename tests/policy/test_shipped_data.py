"""The shipped policy data names tools that exist: every tool pattern in policies/data.json
matches a tool the example upstreams (examples/symbi.toml, started for real) or the built-ins
really expose. A rule on a renamed tool protects nothing (``everything__printEnv`` matched
nothing while ``everything__get-env`` returned secrets to developers)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from gateway.bus.builtin import TOOLS as BUS_TOOLS
from gateway.catalog import namespaced
from gateway.config.load import load_config
from gateway.memory.schemas import KNOWLEDGE_TOOLS, MEMORY_TOOLS
from gateway.sandbox.tools import TOOLS as SANDBOX_TOOLS
from tests.conftest import ROOT, VENV_BIN, require_peers

pytestmark = pytest.mark.anyio
DATA = ROOT / "policies/data.json"
EXAMPLE = ROOT / "examples/symbi.toml"


def _command(command: str) -> str:
    # The example points at the repo's .venv; a worktree shares the venv that runs the tests.
    path = Path(command)
    if "/" not in command or path.exists():
        return command
    return str(VENV_BIN / path.name)


async def _exposed() -> set[str]:
    require_peers()
    config = load_config(EXAMPLE, {})
    names = {f"sandbox__{t['name']}" for t in SANDBOX_TOOLS}  # the built-ins
    names |= {f"memory__{t['name']}" for t in MEMORY_TOOLS} | {
        f"knowledge__{t['name']}" for t in KNOWLEDGE_TOOLS
    }
    names |= {f"bus__{t.name}" for t in BUS_TOOLS}
    for server, srv in config.servers.items():
        assert srv.command is not None, f"servers.{server}: this test starts stdio examples only"
        params = StdioServerParameters(
            command=_command(srv.command),
            args=list(srv.args),
            env=dict(srv.env) or None,
            cwd=str(srv.cwd or EXAMPLE.parent),
        )
        with anyio.fail_after(60):
            async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
                await s.initialize()
                tools = (await s.list_tools()).tools
        assert tools, f"example upstream {server!r} exposes no tools"
        names |= {namespaced(server, t.name, srv.pass_through) for t in tools}
    return names


def _tool_patterns(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, pattern) for every tool pattern in the data, principals in any namespace."""

    def entries(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict) and any(k in node for k in ("tools", "deny_tools", "roles")):
            yield where, node
        elif isinstance(node, dict):
            for k, v in node.items():
                yield from entries(v, f"{where}.{k}")

    for where, entry in [
        *entries(data.get("principals", {}), "principals"),
        *entries(data.get("roles", {}), "roles"),
    ]:
        for field in ("tools", "deny_tools"):
            for i, p in enumerate(entry.get(field, [])):
                yield f"{where}.{field}[{i}]", p
    for field in ("tool_rate_limits", "max_result_bytes", "redact_arguments", "redact_result"):
        for p in data.get(field, {}):
            yield f"{field}.{p}", p
    for i, p in enumerate(data.get("audit_minimal", [])):
        yield f"audit_minimal[{i}]", p


async def test_every_tool_pattern_of_the_shipped_data_matches_a_real_tool() -> None:
    exposed = await _exposed()
    data = json.loads(DATA.read_text())["symbi_data"]
    patterns = list(_tool_patterns(data))
    assert len(patterns) > 20  # the walk found the data's rules
    dead = [f"{where}: {p!r}" for where, p in patterns if not any(fnmatch.fnmatchcase(t, p) for t in exposed)]
    assert dead == [], f"patterns that match no tool of the example upstreams: {dead}"
    configured = set(load_config(EXAMPLE, {}).servers) | {"sandbox", "memory", "knowledge", "bus"}
    assert set(data.get("upstreams", {})) <= configured


async def test_environment_tool_is_not_granted_to_developers() -> None:
    """The tool that returns the whole environment exists and the developer role cannot call it."""
    exposed = await _exposed()
    assert "everything__get-env" in exposed
    data = json.loads(DATA.read_text())["symbi_data"]
    dev = data["roles"]["developer"]
    granted = [p for p in dev["tools"] if fnmatch.fnmatchcase("everything__get-env", p)]
    assert granted == [] or any(
        fnmatch.fnmatchcase("everything__get-env", p) for p in dev.get("deny_tools", [])
    )
    assert any(fnmatch.fnmatchcase("everything__get-env", p) for p in data["redact_result"])
