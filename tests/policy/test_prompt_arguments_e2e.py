"""A prompt's arguments get a tool's argument checks and redaction, through ``symbi mcp`` with
the shipped ``policies.rego`` and a real upstream (server-everything's ``args-prompt``, which
writes its arguments into the prompt it returns).

Red team /tmp/rt-call r1: ``prompts/get`` with ``path=/etc/shadow`` reached the upstream, and
``api_token`` reached it and the audit log raw, the record saying ``arguments_redacted: policy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.audit import store
from gateway.config import load_config
from tests.conftest import everything_stdio_config, require_peers
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

SECRET = "PROMPT-SECRET-hunter2"
DATA = {
    "symbi_data": {
        "principals": {
            "stdio": {"local": {"roles": [], "tools": ["everything__echo"], "prompts": ["everything__*"]}}
        },
        "roles": {},
        "upstreams": {"everything": {"allow_unverified": True}},
        "fs_roots": ["/tmp"],
        "path_arguments": ["city"],
        "redact_arguments": {"everything__args-*": ["state"]},
    }
}


def config(tmp_path: Path) -> Path:
    require_peers()
    data = tmp_path / "policy-data.json"
    data.write_text(json.dumps(DATA))
    return everything_stdio_config(tmp_path, principal="local", policy_data=data)


def _text(result: types.GetPromptResult) -> str:
    content = result.messages[0].content
    assert isinstance(content, types.TextContent)
    return content.text


async def test_a_prompts_arguments_are_checked_and_redacted(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    async with stdio_session(cfg) as s:
        with pytest.raises(MCPError) as denied:
            await s.get_prompt("everything__args-prompt", {"city": "/etc/shadow"})
        assert denied.value.error.data["code"] == "policy_denied"
        ok = await s.get_prompt("everything__args-prompt", {"city": "/tmp/ok", "state": SECRET})
        assert _text(ok) == "What's weather in /tmp/ok, [REDACTED]?"  # the upstream got it redacted
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        records = store.query(conn, types=("prompt.get",))
    finally:
        conn.close()
    by_outcome = {e.details["outcome"]: e.details for e in records}
    assert by_outcome["denied"]["arguments"] == {"city": "[not recorded]"}
    assert by_outcome["ok"]["arguments"] == {"city": "/tmp/ok", "state": "[REDACTED]"}
    assert by_outcome["ok"]["arguments_redacted"] == "policy"
    assert SECRET not in json.dumps([e.details for e in records])
