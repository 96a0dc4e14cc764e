"""ValidateResult: a tool result's structuredContent against the tool's approved outputSchema.

In-process (a real CallContext, an endpoint standing where the upstream is) for each branch,
and end to end: `symbi mcp` with a real upstream (tests/peers/listing_server.py answers what its
file says) whose approved outputSchema its results break, and server-everything's
`get-structured-content`, whose results keep to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, types
from mcp.types import CallToolResult, TextContent

from gateway.audit import store
from gateway.config.load import load_config
from gateway.context import ToolInfo
from gateway.errors import ResultInvalid
from gateway.policy.redact import REDACTED
from gateway.steps.results import ValidateResult
from tests.conftest import ROOT, everything_stdio_config, policy_config, upstream_writable
from tests.server._clients import stdio_session
from tests.steps.test_verify import Endpoint, call_with, run
from tests.upstream.test_listing import config
from tests.verify.test_gateway_verification import error_of

SCHEMA = {
    "type": "object",
    "properties": {"temperature": {"type": "number"}, "city": {"type": "string"}},
    "required": ["temperature"],
}
GOOD = {"temperature": 21.5, "city": "Oslo"}
# (a wrong type: a secret where a number belongs; a required property missing)
BAD = [{"temperature": "sk-live-0123456789abcdef"}, {"city": "Oslo"}]


def weather(schema: Any = SCHEMA) -> ToolInfo:
    definition: dict[str, Any] = {"name": "t", "inputSchema": {"type": "object"}}
    if schema is not None:
        definition["outputSchema"] = schema
    return ToolInfo(
        name="up__t", original_name="t", upstream="up", definition=definition, verification="pinned"
    )


def result(structured: Any, is_error: bool = False) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text="weather")], structured_content=structured, is_error=is_error
    )


@pytest.mark.parametrize("structured", [*BAD, None, ["not", "an", "object"]])
def test_a_result_breaking_the_output_schema_is_refused(structured: Any) -> None:
    with pytest.raises(ResultInvalid) as err:
        run(ValidateResult(), Endpoint(result(structured)), call_with(weather()))
    assert err.value.code == "result_invalid"
    assert "sk-live" not in " ".join(err.value.reasons)  # the value at the path is never quoted


def test_the_reason_names_the_path_and_the_keyword() -> None:
    with pytest.raises(ResultInvalid) as err:
        run(ValidateResult(), Endpoint(result(BAD[0])), call_with(weather()))
    assert err.value.reasons == ["structuredContent.temperature: fails the outputSchema's 'type'"]


@pytest.mark.parametrize(
    ("tool", "answer"),
    [
        (weather(), result(GOOD)),  # keeps to the schema
        (weather(None), result(None)),  # no outputSchema: nothing to check
        (weather(), result(BAD[0], is_error=True)),  # an error result needs no structured content
    ],
)
def test_a_result_the_schema_allows_passes_unchanged(tool: ToolInfo, answer: CallToolResult) -> None:
    assert run(ValidateResult(), Endpoint(answer), call_with(tool)) is answer


def test_an_invalid_output_schema_refuses_the_result() -> None:
    with pytest.raises(ResultInvalid):
        run(ValidateResult(), Endpoint(result(GOOD)), call_with(weather({"type": 12})))


def test_an_output_schema_ref_to_a_file_of_the_gateways_host_is_not_read(tmp_path: Path) -> None:
    """Attack: an approved outputSchema whose ``$ref`` names a file of the gateway's host: read
    by jsonschema's default registry (the result passed when it matched what the file holds).
    Refused now, naming the ref, nothing of the file in it."""
    held = tmp_path / "held.json"
    held.write_text(json.dumps({"type": "number", "description": "TOPSECRET-4242"}))
    schema = {"type": "object", "properties": {"temperature": {"$ref": held.as_uri()}}}
    with pytest.raises(ResultInvalid) as err:
        run(ValidateResult(), Endpoint(result(GOOD)), call_with(weather(schema)))
    assert "$ref" in err.value.message and "TOPSECRET" not in err.value.message


def test_other_kinds_are_not_checked() -> None:
    answer = result(BAD[1])
    assert run(ValidateResult(), Endpoint(answer), call_with(weather(), kind="resources/read")) is answer


def _audited_calls(cfg: Path) -> list[dict[str, Any]]:
    conn = store.open_reader(load_config(cfg).audit_path)
    try:
        return [dict(r.details) for r in store.query(conn, types=("tool.call",))]
    finally:
        conn.close()


async def _raw_call(s: ClientSession, name: str) -> CallToolResult:
    """A ``tools/call`` as a client that does not check structuredContent makes it (the SDK's
    ``call_tool`` checks it against the listed outputSchema and would raise on its own side:
    the gateway's refusal would not be what the test sees)."""
    request = types.CallToolRequest(params=types.CallToolRequestParams(name=name, arguments={}))
    return await s.send_request(request, CallToolResult)


@pytest.mark.anyio
async def test_an_upstream_breaking_its_approved_output_schema_is_refused_end_to_end(tmp_path: Path) -> None:
    """Attack: an upstream whose approved definition declares an outputSchema answers with a
    secret where a number belongs, without a required property, and without structuredContent.
    A client that does not check (``_raw_call``) received each as sent; now each call fails as
    ``result_invalid``, audited with that code, the secret in neither the error nor the log."""
    tool = {
        "name": "weather",
        "description": "Weather.",
        "inputSchema": {"type": "object"},
        "outputSchema": SCHEMA,
    }
    answers = {
        "results": {"weather": {"content": [{"type": "text", "text": "w"}], "structuredContent": GOOD}}
    }
    cfg, files = config(tmp_path, {"wx": {"tools": [tool], **answers}})
    async with stdio_session(cfg) as s:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert listed["wx__weather"].output_schema == SCHEMA  # pinned on first use, listed as approved
        ok = await _raw_call(s, "wx__weather")  # keeps to its schema: passed unchanged
        assert not ok.is_error and ok.structured_content == GOOD
        for broken in [*BAD, None]:
            answer: dict[str, Any] = {"content": [{"type": "text", "text": "w"}]}
            if broken is not None:
                answer["structuredContent"] = broken
            files["wx"].write_text(json.dumps({"tools": [tool], "results": {"weather": answer}}))
            refused = await _raw_call(s, "wx__weather")
            assert refused.structured_content is None
            assert error_of(refused)["code"] == "result_invalid"
            assert "sk-live" not in refused.model_dump_json()
    records = _audited_calls(cfg)
    assert [r.get("error_code") for r in records] == [None, *["result_invalid"] * 3]
    assert "sk-live" not in json.dumps(records)


CONDITIONS_POLICY = """
package symbi

import rego.v1

decision := {"allow": true, "reasons": [], "conditions": %s}
"""


def _conditions_config(tmp_path: Path, conditions: dict[str, Any]) -> Path:
    """``symbi mcp`` in front of an upstream whose weather tool keeps to its outputSchema, under
    a policy that allows every call with ``conditions``."""
    tool = {"name": "weather", "inputSchema": {"type": "object"}, "outputSchema": SCHEMA}
    answer = {"content": [{"type": "text", "text": "w"}], "structuredContent": GOOD}
    listing = tmp_path / "wx.json"
    listing.write_text(json.dumps({"tools": [tool], "results": {"weather": answer}}))
    servers = f"""
        [servers.wx]
        command = "{sys.executable}"
        args = ["{ROOT / "tests/peers/listing_server.py"}"]
        verification = "tofu"
        env = {{ LISTING = "{listing}", NAME = "wx", READS = "{upstream_writable(tmp_path) / "reads"}" }}
        """
    return policy_config(tmp_path, CONDITIONS_POLICY % json.dumps(conditions), servers)


@pytest.mark.anyio
async def test_what_is_checked_is_what_the_upstream_sent_before_the_result_conditions(tmp_path: Path) -> None:
    """The policy's result conditions change a result after the check: a conforming result
    redacted by them is what they made it (a string where the schema has a number), not
    refused as breaking the schema."""
    cfg = _conditions_config(tmp_path, {"redact_result": ["temperature"]})
    async with stdio_session(cfg) as s:
        await s.list_tools()
        r = await _raw_call(s, "wx__weather")
    assert not r.is_error, r
    assert r.structured_content == {"temperature": REDACTED, "city": "Oslo"}


@pytest.mark.anyio
async def test_a_result_over_the_cap_of_a_tool_with_an_output_schema_is_an_error_result(
    tmp_path: Path,
) -> None:
    """A result cut to ``max_result_bytes`` loses its structuredContent (it cannot be cut). It
    went out as a plain result without it, which breaks the outputSchema: the SDK's client
    (``call_tool`` checks it) raised instead of reading it. Now it is an ``isError`` result
    saying the result was too large, which a checking client reads; under a cap it fits, the
    same call passes whole."""
    async with stdio_session(_conditions_config(tmp_path, {"max_result_bytes": 40})) as s:
        await s.list_tools()
        cut = await s.call_tool("wx__weather", {})
    assert cut.is_error and cut.structured_content is None
    assert isinstance(cut.content[0], TextContent) and "40" in cut.content[0].text
    (tmp_path / "big").mkdir()
    async with stdio_session(_conditions_config(tmp_path / "big", {"max_result_bytes": 10_000})) as s:
        await s.list_tools()
        whole = await s.call_tool("wx__weather", {})
    assert not whole.is_error and whole.structured_content == GOOD


@pytest.mark.anyio
async def test_a_real_upstreams_structured_results_pass(tmp_path: Path) -> None:
    cfg = everything_stdio_config(tmp_path, verification="tofu")
    async with stdio_session(cfg) as s:
        listed = {t.name: t for t in (await s.list_tools()).tools}
        assert listed["everything__get-structured-content"].output_schema is not None
        r = await s.call_tool("everything__get-structured-content", {"location": "New York"})
        assert not r.is_error and isinstance(r.structured_content, dict)
