"""The policy's ``max_result_bytes`` on resources and prompts, through ``symbi mcp``.

Resources and prompts have no ``isError`` form, so the gateway refuses an oversized result
rather than cut it (gateway/policy/README.md). The shipped policy caps tools only; a custom
policy here sets the cap for every kind, and the same reads pass under a large cap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import EVERYTHING_JS, require_peers, write_config
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

CAP_POLICY = """
package symbi

import rego.v1

decision := {"allow": true, "reasons": [], "conditions": {"max_result_bytes": %d}}
"""


def cap_cfg(tmp_path: Path, cap: int) -> Path:
    require_peers()
    policy = tmp_path / f"cap-{cap}.rego"
    policy.write_text(CAP_POLICY % cap)
    return write_config(
        tmp_path,
        f"""
        [policy]
        path = "{policy}"
        [sandbox]
        code_tools = false
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
        name=f"cap-{cap}.toml",
    )


async def test_oversized_resource_and_prompt_results_are_refused_not_cut(tmp_path: Path) -> None:
    async with stdio_session(cap_cfg(tmp_path, 1_000_000)) as s:  # control: they fit under a large cap
        uri = str((await s.list_resources()).resources[0].uri)
        prompt = next(p.name for p in (await s.list_prompts()).prompts if p.name.endswith("simple-prompt"))
        assert (await s.read_resource(uri)).contents
        assert (await s.get_prompt(prompt)).messages
    async with stdio_session(cap_cfg(tmp_path, 16)) as s:
        with pytest.raises(MCPError) as res_err:
            await s.read_resource(uri)
        with pytest.raises(MCPError) as prompt_err:
            await s.get_prompt(prompt)
    for e in (res_err.value, prompt_err.value):
        data = e.error.data or {}
        assert data.get("code") == "policy_denied", e.error
