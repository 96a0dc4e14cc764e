"""Prompts, resources and resource templates pinned as tools are, end to end: a real upstream
(tests/peers/listed_server.py) that, after its first approved listing, redefines a prompt and
adds a prompt, a resource and a template; the real gateway, SDK client and CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import ROOT, write_config
from tests.server._clients import stdio_session
from tests.verify.test_gateway_verification import reviewed, symbi

pytestmark = pytest.mark.anyio
LISTED = ROOT / "tests/peers/listed_server.py"
LATE = ("prompt:mut__onboarding", "resource:mut__docs://policy", "template:mut__files://{path}")


def listed_cfg(tmp_path: Path, mode: str) -> Path:
    return write_config(
        tmp_path,
        f"""
        [mcp]
        recheck_interval_s = 0.2
        [sandbox]
        code_tools = false
        [servers.mut]  # allow_unverified in the test policy data (warn)
        command = "{sys.executable}"
        args = ["{LISTED}"]
        verification = "{mode}"
        """,
    )


def state(cfg: Path) -> dict[str, dict[str, Any]]:
    out = symbi("tools", "list", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    return {r["tool"]: r for r in json.loads(out.stdout)}


async def rug_pulled(s: Any, cfg: Path) -> dict[str, dict[str, Any]]:
    """Run the upstream's rug pull; the state once the gateway has seen all of it."""
    assert not (await s.call_tool("mut__rug_pull", {})).is_error
    with anyio.fail_after(20):
        while True:
            rows = state(cfg)
            if all(n in rows for n in LATE) and rows["prompt:mut__summarize"]["drifted"]:
                return rows
            await anyio.sleep(0.1)


async def held_code(call: Any) -> str:
    with pytest.raises(MCPError) as caught:
        await call
    return str(caught.value.error.data["code"])


async def test_a_redefined_or_late_prompt_resource_or_template_is_held_under_tofu(tmp_path: Path) -> None:
    cfg = listed_cfg(tmp_path, "tofu")
    async with stdio_session(cfg) as s:
        assert "mut__summarize" in {p.name for p in (await s.list_prompts()).prompts}
        first = state(cfg)
        assert first["prompt:mut__summarize"]["status"] == "pinned"
        assert first["resource:mut__docs://readme"]["status"] == "pinned"
        rows = await rug_pulled(s, cfg)
        assert rows["prompt:mut__summarize"]["status"] == "drifted"
        assert {rows[n]["status"] for n in LATE} == {"unverified"}
        assert rows["mut__extra"]["status"] == "unverified"  # the control: a late tool
        # nothing of it is listed or served; what did not change still is
        assert {p.name for p in (await s.list_prompts()).prompts} & {
            "mut__summarize",
            "mut__onboarding",
        } == set()
        assert [str(r.uri) for r in (await s.list_resources()).resources if r.uri.startswith("docs://")] == [
            "docs://readme"
        ]
        templates = (await s.list_resource_templates()).resource_templates
        assert "files://{path}" not in {t.uri_template for t in templates}
        assert await held_code(s.get_prompt("mut__summarize", {"text": "x"})) == "held_for_approval"
        assert await held_code(s.get_prompt("mut__onboarding", {})) == "held_for_approval"
        assert await held_code(s.read_resource("docs://policy")) == "held_for_approval"
        ref = types.PromptReference(type="ref/prompt", name="mut__onboarding")
        assert await held_code(s.complete(ref, {"name": "x", "value": ""})) == "held_for_approval"
        assert await held_code(s.read_resource("files://hosts")) == "catalog_error"  # no template serves it
        assert (await s.read_resource("docs://readme")).contents[0].text == "the readme"  # type: ignore[union-attr]
        # a person reviews and approves: served from then on
        diff = symbi("tools", "diff", "prompt:mut__summarize", "--config", str(cfg))
        assert diff.returncode == 1 and "conversation" in diff.stdout
        names = ["prompt:mut__summarize", *LATE]
        approved = symbi("tools", "approve", *names, *reviewed(cfg, *names), "--config", str(cfg))
        assert approved.returncode == 0, approved.stderr
        with anyio.fail_after(10):
            while "mut__onboarding" not in {p.name for p in (await s.list_prompts()).prompts}:
                await anyio.sleep(0.1)
        got = await s.get_prompt("mut__summarize", {"text": "x"})
        assert "secret" in got.messages[0].content.text  # type: ignore[union-attr]
        assert (await s.read_resource("files://hosts")).contents[0].text == "contents of hosts"  # type: ignore[union-attr]


async def test_warn_serves_them_and_records_the_drift(tmp_path: Path) -> None:
    cfg = listed_cfg(tmp_path, "warn")
    async with stdio_session(cfg) as s:
        await s.list_prompts()
        both = ("prompt:mut__summarize", "mut__rug_pull")
        approved = symbi("tools", "approve", *both, *reviewed(cfg, *both), "--config", str(cfg))
        assert approved.returncode == 0, approved.stderr
        rows = await rug_pulled(s, cfg)
        assert rows["prompt:mut__summarize"]["status"] == "drifted"
        assert {p.name for p in (await s.list_prompts()).prompts} >= {"mut__summarize", "mut__onboarding"}
        assert (await s.read_resource("docs://policy")).contents[0].text == "the policy"  # type: ignore[union-attr]


async def test_strict_pins_them_on_first_sight_as_tofu_does(tmp_path: Path) -> None:
    """SchemaPin signs tools only: under strict a prompt or resource cannot be signed, so it
    follows the tofu rules rather than being refused for good."""
    cfg = listed_cfg(tmp_path, "strict")
    async with stdio_session(cfg) as s:
        assert "mut__summarize" in {p.name for p in (await s.list_prompts()).prompts}
        assert (await s.read_resource("docs://readme")).contents[0].text == "the readme"  # type: ignore[union-attr]
    rows = state(cfg)
    assert rows["prompt:mut__summarize"]["status"] == "pinned"
    assert rows["mut__echo"]["status"] == "unverified"  # unsigned tools stay refused under strict
    # and a person can approve one (no signing key is asked for: nothing could sign it)
    hashes = reviewed(cfg, "prompt:mut__summarize")
    approved = symbi("tools", "approve", "prompt:mut__summarize", *hashes, "--config", str(cfg))
    assert approved.returncode == 0, approved.stderr
