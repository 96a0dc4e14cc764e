"""Listings filtered by the policy (gateway/visibility.py), with a real Rego policy in the
embedded engine: a caller is shown only what the policy lets it use (action "list"), and
everything when the config turns the policy off."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import types

from gateway.catalog import CatalogTool
from gateway.context import Principal, ToolInfo, UpstreamInfo
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.runtime.agents import AgentRegistry
from gateway.visibility import Visibility
from tests.runtime.test_core import Recorder

pytestmark = pytest.mark.anyio

_POLICY = (
    "package symbi\nimport rego.v1\n\n"
    'default decision := {"allow": false, "reasons": ["not listed"], "conditions": {}}\n\n'
    'decision := {"allow": true, "reasons": [], "conditions": {}} if {\n'
    '    input.action == "list"\n'
    '    not contains(input.target, "secret")\n'
    '    input.principal.id == "alice"\n'
    "}\n"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _engine(tmp_path: Path) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(_POLICY)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    return eng


def _tool(name: str) -> CatalogTool:
    info = ToolInfo(name=f"fs__{name}", original_name=name, upstream="fs", definition={"name": name})
    return CatalogTool(info=info, tool=types.Tool(name=f"fs__{name}", input_schema={"type": "object"}))


def _visibility(policy: EmbeddedEngine | None) -> Visibility:
    return Visibility(
        policy, AgentRegistry(Recorder()), lambda name: UpstreamInfo(name=name, transport="stdio")
    )


async def test_a_listing_shows_only_the_tools_the_policy_lets_the_caller_see(tmp_path: Path) -> None:
    vis = _visibility(_engine(tmp_path))
    tools = [_tool("read"), _tool("secret_dump"), _tool("write")]
    shown = await vis.among(Principal(id="alice"), tools)
    assert [t.info.name for t in shown] == ["fs__read", "fs__write"]
    assert await vis.among(Principal(id="mallory"), tools) == []


async def test_resources_and_prompts_are_filtered_by_the_same_rule(tmp_path: Path) -> None:
    vis = _visibility(_engine(tmp_path))
    pairs = [("file:///notes", "fs"), ("file:///secret", "fs")]
    assert await vis.targets(Principal(id="alice"), "resources/read", pairs) == {"file:///notes"}
    assert await vis.targets(Principal(id="mallory"), "prompts/get", pairs) == set()


async def test_with_the_policy_off_everything_is_shown() -> None:
    vis = _visibility(None)
    tools = [_tool("read"), _tool("secret_dump")]
    assert await vis.among(Principal(id="anyone"), tools) == tools
    pairs = [("file:///secret", "fs")]
    assert await vis.targets(Principal(id="anyone"), "resources/read", pairs) == {"file:///secret"}
