"""The boundary's decorators: every failure of a front handler becomes an MCP result or error."""

from __future__ import annotations

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.boundary import as_protocol_error, as_tool_result, without_gateway_meta
from gateway.errors import PolicyDenied, UnknownTool, UpstreamError

pytestmark = pytest.mark.anyio


def _raising(err: BaseException):  # type: ignore[no-untyped-def]
    async def handler() -> types.CallToolResult:
        raise err

    return handler


async def test_a_denied_tool_call_is_an_error_result_with_its_code() -> None:
    result = await as_tool_result(_raising(UnknownTool("unknown tool 'x'")))()
    assert isinstance(result, types.CallToolResult) and result.is_error
    assert (result.meta or {})["symbi/error"]["code"] == UnknownTool.code


async def test_a_crash_in_a_tool_call_is_an_internal_error_result() -> None:
    result = await as_tool_result(_raising(RuntimeError("secret detail")))()
    assert isinstance(result, types.CallToolResult) and result.is_error
    assert (result.meta or {})["symbi/error"]["code"] == "internal_error"
    assert "secret detail" not in str(result.content)


async def test_an_upstream_json_rpc_error_is_passed_on_as_is() -> None:
    theirs = MCPError(code=-32050, message="upstream says no")
    with pytest.raises(MCPError) as caught:
        await as_tool_result(_raising(UpstreamError("failed", mcp_error=theirs)))()
    assert caught.value is theirs


async def test_other_requests_get_json_rpc_errors() -> None:
    with pytest.raises(MCPError) as denied:
        await as_protocol_error(_raising(PolicyDenied("no")))()
    assert denied.value.error.code == types.INVALID_PARAMS
    with pytest.raises(MCPError) as crashed:
        await as_protocol_error(_raising(KeyError("x")))()
    assert crashed.value.error.code == types.INTERNAL_ERROR
    mine = MCPError(code=types.INVALID_PARAMS, message="unknown resource")
    with pytest.raises(MCPError) as passed:
        await as_protocol_error(_raising(mine))()
    assert passed.value is mine


def test_only_the_gateways_own_meta_keys_are_dropped() -> None:
    forged = {"symbi/error": {"code": "policy_denied"}, "Symbi/Verification": {}, "symbiosis": 1}
    r = types.CallToolResult(content=[], _meta=forged)
    assert without_gateway_meta(r).meta == {"symbiosis": 1}
    only = types.ReadResourceResult(contents=[], _meta={"symbi/error": {}})
    assert without_gateway_meta(only).meta is None  # nothing left: no empty _meta
    clean = types.GetPromptResult(messages=[], _meta={"vendor/x": 1})
    assert without_gateway_meta(clean) is clean  # nothing to drop: the very result, no copy
    assert without_gateway_meta(types.CallToolResult(content=[])).meta is None


def test_the_gateways_keys_are_dropped_from_each_block_too() -> None:
    forged = {"symbi/error": {"code": "policy_denied"}, "ui/hint": 1}
    text = types.TextContent(type="text", text="t", _meta=forged)
    plain = types.TextContent(type="text", text="u", _meta={"ui/hint": 2})
    inner = types.TextResourceContents(uri="file:///a", text="a", _meta={"SYMBI/verification": {}})
    embedded = types.EmbeddedResource(type="resource", resource=inner)
    r = without_gateway_meta(types.CallToolResult(content=[text, plain, embedded]))
    assert [b.meta for b in r.content] == [{"ui/hint": 1}, {"ui/hint": 2}, None]
    assert r.content[1] is plain  # a block with nothing to drop is kept as it is
    assert r.content[2].resource.meta is None  # type: ignore[union-attr]
    read = without_gateway_meta(types.ReadResourceResult(contents=[inner]))
    assert read.contents[0].meta is None
    message = types.PromptMessage(role="user", content=text)
    prompt = without_gateway_meta(types.GetPromptResult(messages=[message]))
    assert prompt.messages[0].content.meta == {"ui/hint": 1}
    clean = types.CallToolResult(content=[plain])
    assert without_gateway_meta(clean) is clean
