"""The policy's result conditions through ``symbi mcp``: ``max_result_bytes`` on resources and
prompts, and ``redact_result`` / ``max_result_bytes`` on every channel of a tool's answer.

Resources and prompts have no ``isError`` form, so the gateway refuses an oversized result
rather than cut it (gateway/policy/README.md). The shipped policy caps tools only; a custom
policy here sets the cap for every kind, and the same reads pass under a large cap.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.policy.redact import REDACTED
from tests.conftest import EVERYTHING_JS, ROOT, policy_config, require_peers
from tests.server._clients import stdio_session

pytestmark = pytest.mark.anyio

CAP_POLICY = """
package symbi

import rego.v1

decision := {"allow": true, "reasons": [], "conditions": {"max_result_bytes": %d}}
"""


def cap_cfg(tmp_path: Path, cap: int) -> Path:
    require_peers()
    servers = f"""
        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """
    return policy_config(tmp_path, CAP_POLICY % cap, servers, name=f"cap-{cap}.toml")


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


SECRET = "the-db-password-hunter2"
REDACT_POLICY = """
package symbi

import rego.v1

decision := {"allow": true, "reasons": [], "conditions": {"redact_result": ["password"], "max_result_bytes": 200000}}
"""


def raw_cfg(tmp_path: Path, body: str) -> Path:
    servers = f"""
        [servers.raw]
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/raw_server.py"}"]
        verification = "warn"
        """
    return policy_config(tmp_path, body, servers, name="redact.toml")


async def test_result_conditions_reach_every_channel_of_a_result(tmp_path: Path) -> None:
    """Attack (rt-call 4): with ``redact_result: ["password"]`` and ``max_result_bytes`` in
    force, an upstream put the password where the conditions did not look: an embedded
    resource's text, the result's ``_meta``, a JSON-RPC error's data (500 KB of it: the reply
    was 500,124 bytes against a 200,000-byte cap) and a progress message. Each came back as it
    was. Now each is redacted, the error is cut to the cap, the progress message dropped."""
    leak = json.dumps({"password": SECRET})
    embedded = {
        "type": "resource",
        "resource": {"uri": "x://cfg", "mimeType": "application/json", "text": leak},
    }
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    async with stdio_session(raw_cfg(tmp_path, REDACT_POLICY)) as s:
        res = await s.call_tool("raw__t", {"mode": "given", "message": {"content": [embedded]}})
        meta = await s.call_tool(
            "raw__t", {"mode": "given", "message": {"content": [], "_meta": {"password": SECRET, "x": 1}}}
        )
        errors = []
        for blob in (10, 500_000):
            error = {"code": -32005, "message": "failed", "data": {"password": SECRET, "blob": "x" * blob}}
            with pytest.raises(MCPError) as raised:
                await s.call_tool("raw__t", {"mode": "given_error", "message": error})
            errors.append(raised.value.error)
        done = await s.call_tool(
            "raw__t",
            {"mode": "progress_given", "message": f"password={SECRET}"},
            progress_callback=on_progress,
        )
    assert json.loads(res.content[0].resource.text) == {"password": REDACTED}  # type: ignore[union-attr]
    assert meta.meta is not None and meta.meta["password"] == REDACTED and meta.meta["x"] == 1
    small, big = errors
    assert small.code == -32005 and small.data == {"password": REDACTED, "blob": "x" * 10}
    assert big.code == -32005 and big.data is None  # over the cap: the data dropped, not cut
    assert len(json.dumps(big.model_dump())) < 200_000
    assert not done.is_error and messages == [None]  # the progress came, its message did not
    assert SECRET not in json.dumps([res.model_dump(), meta.model_dump(), small.model_dump()])


async def test_result_conditions_reach_a_log_message_sent_during_the_call(tmp_path: Path) -> None:
    """Attack: with ``redact_result: ["password"]`` in force, the upstream sends the password
    as a log notification (``notifications/message``) while the call runs, and under a
    200 KB ``max_result_bytes`` 300 KB of it: the gateway relayed both to the caller as they
    were, as progress messages were before. Now a log line under ``redact_result`` is dropped,
    and one over the cap is cut to it."""
    logged: list[object] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(params.data)

    async with stdio_session(raw_cfg(tmp_path, REDACT_POLICY), logging_callback=on_log) as s:
        done = await s.call_tool("raw__t", {"mode": "log_given", "message": f"password={SECRET}"})
        await s.send_ping()  # anything relayed has arrived by the answer to this
    assert not done.is_error and logged == []
    async with stdio_session(raw_cfg(tmp_path, CAP_POLICY % 200_000), logging_callback=on_log) as s:
        await s.call_tool("raw__t", {"mode": "log_given", "message": "working"})
        await s.call_tool("raw__t", {"mode": "log_given", "message": {"blob": "x" * 300_000}})
        await s.send_ping()
    small, big = logged  # relayed: the upstream's log lines do reach the caller
    assert small == "working"
    assert isinstance(big, str) and big.startswith('{"blob": "xxx') and len(big) < 201_000
