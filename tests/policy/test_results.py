"""The result conditions on every part of an answer: content items, ``_meta``, resources and
prompts, an upstream's JSON-RPC error, progress messages (``gateway.policy.results``).
The conditions through ``symbi mcp`` are ``tests/policy/test_result_cap_e2e.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    GetPromptResult,
    PromptMessage,
    ReadResourceResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from gateway.context import ToolInfo
from gateway.errors import PolicyDenied, UpstreamError
from gateway.policy.redact import REDACTED
from gateway.policy.results import (
    TRUNCATION_MARK,
    cap_result,
    error_under,
    progress_message,
    redact_other,
    redact_result,
    result_size,
)

SECRET = "hunter2-db"
TOKEN = "sk-proj-" + "A" * 32  # recognisable by its look alone
RULES = ["password"]


def _embedded(text: str, meta: dict[str, Any] | None = None) -> EmbeddedResource:
    return EmbeddedResource(
        type="resource", resource=TextResourceContents(uri="x://a", text=text, _meta=meta)
    )


def test_an_embedded_resources_text_and_every_meta_are_redacted() -> None:
    """Attack (rt-call 4 a, b): the secret in an embedded resource's text (JSON or prose), in the
    result's ``_meta`` or in an item's ``_meta`` passed ``redact_result``."""
    r = CallToolResult(
        content=[
            _embedded(json.dumps({"password": SECRET}), meta={"password": SECRET}),
            _embedded(f"prose with {TOKEN}"),
            TextContent(type="text", text="ok", _meta={"password": SECRET}),
            ResourceLink(type="resource_link", uri="x://b", name="b", description=f"key {TOKEN}"),
        ],
        _meta={"password": SECRET, "n": 1},
    )
    out = redact_result(r, RULES)
    dumped = out.model_dump_json(by_alias=True)
    assert SECRET not in dumped and TOKEN not in dumped
    first = out.content[0]
    assert isinstance(first, EmbeddedResource) and isinstance(first.resource, TextResourceContents)
    assert json.loads(first.resource.text) == {"password": REDACTED}
    assert first.resource.meta == {"password": REDACTED}
    assert out.meta == {"password": REDACTED, "n": 1}
    assert SECRET in r.model_dump_json(by_alias=True)  # the input is not modified


def test_an_item_with_nothing_to_redact_is_the_very_item() -> None:
    clean: list[ContentBlock] = [_embedded('{"a": 1}'), TextContent(type="text", text="plain")]
    out = redact_result(CallToolResult(content=clean), RULES)
    assert all(a is b for a, b in zip(out.content, clean, strict=True))


def test_an_embedded_json_text_that_would_not_be_utf8_refuses_the_result_naming_where() -> None:
    r = CallToolResult(content=[_embedded('{"password": "s", "x": "\\ud800"}')])
    with pytest.raises(PolicyDenied) as refused:
        redact_result(r, RULES)
    assert "/content/0/resource/text" in refused.value.reasons[0]


def test_the_cap_counts_and_drops_the_meta() -> None:
    """Attack: a short text with 500 KB of ``_meta`` (the result's or an item's) passed the cap:
    only text was cut, and ``_meta`` kept."""
    big = "x" * 500_000
    for r in (
        CallToolResult(content=[TextContent(type="text", text="ok")], _meta={"blob": big}),
        CallToolResult(content=[TextContent(type="text", text="ok", _meta={"blob": big})]),
    ):
        out = cap_result(r, 1000)
        assert result_size(out) < 1000 and out.meta is None
        assert [c.text for c in out.content] == ["ok", TRUNCATION_MARK.format(cap=1000).strip()]  # type: ignore[union-attr]


def test_a_schema_tools_result_over_the_cap_is_an_error_result_not_cut() -> None:
    """A tool with an ``outputSchema``: its cut result would lack the structuredContent the
    schema asks for; the whole result becomes an error result instead. Its error results, and
    another tool's results, are cut as before."""
    schema = ToolInfo(
        name="up__t",
        original_name="t",
        upstream="up",
        definition={"name": "t", "inputSchema": {"type": "object"}, "outputSchema": {"type": "object"}},
    )
    r = CallToolResult(content=[TextContent(type="text", text="x" * 200)], structured_content={"n": 1})
    out = cap_result(r, 100, tool=schema)
    assert out.is_error and out.structured_content is None and result_size(out) < 200
    assert cap_result(r, 100).is_error is False  # no outputSchema: the text cut
    failed = r.model_copy(update={"is_error": True})
    assert cap_result(failed, 100, tool=schema).content[0].text.endswith(TRUNCATION_MARK.format(cap=100))  # type: ignore[union-attr]
    assert cap_result(r, 10_000, tool=schema) is r  # within the cap: unchanged


def test_resource_and_prompt_results_are_redacted_as_tool_results() -> None:
    read = ReadResourceResult(
        contents=[TextResourceContents(uri="x://a", text=json.dumps({"password": SECRET}))],
        _meta={"password": SECRET},
    )
    prompt = GetPromptResult(
        description=f"uses {TOKEN}",
        messages=[PromptMessage(role="user", content=_embedded(json.dumps({"password": SECRET})))],
    )
    for result in (read, prompt):
        assert SECRET not in redact_other(result, RULES).model_dump_json(by_alias=True)
    assert TOKEN not in redact_other(prompt, RULES).model_dump_json(by_alias=True)
    assert redact_other(read, []) is read


def _upstream_error(message: str, data: Any) -> UpstreamError:
    return UpstreamError("upstream 'up' returned an error", mcp_error=MCPError(-32005, message, data))


def _data(err: UpstreamError) -> Any:
    assert isinstance(err.mcp_error, MCPError)
    return err.mcp_error.error.data


def test_an_upstream_error_is_redacted_and_capped_as_a_result() -> None:
    """Attack (rt-call 4 c): a JSON-RPC error's data held the password and 500 KB of padding;
    the client got all of it, over the cap."""
    err = _upstream_error(f"failed with {TOKEN}", {"password": SECRET, "pad": "x" * 10})
    out = error_under(err, {"redact_result": RULES}, "up")
    assert isinstance(out.mcp_error, MCPError) and out.mcp_error.code == -32005
    assert out.mcp_error.error.data == {"password": REDACTED, "pad": "x" * 10}
    assert TOKEN not in out.mcp_error.message and TOKEN not in out.message
    text = _upstream_error("failed", json.dumps({"password": SECRET}))  # data as a JSON text
    assert SECRET not in str(_data(error_under(text, {"redact_result": RULES}, "up")))
    huge = _upstream_error("m" * 300_000, {"pad": "x" * 500_000})
    capped = error_under(huge, {"max_result_bytes": 200_000}, "up").mcp_error
    assert isinstance(capped, MCPError) and capped.error.data is None
    assert len(capped.message.encode()) < 200_000 + 200 and capped.message.endswith("200000 bytes]")


def test_an_upstream_error_without_result_conditions_is_passed_on_as_is() -> None:
    err = _upstream_error("failed", {"password": SECRET})
    assert error_under(err, {"rate_limit": 5}, "up") is err
    small = _upstream_error("failed", {"k": 1})
    assert _data(error_under(small, {"max_result_bytes": 1000}, "up")) == {"k": 1}


def test_progress_messages_follow_the_result_conditions() -> None:
    """Attack (rt-call 4 d): a progress message carried the password, relayed as it came."""
    assert progress_message(f"password={SECRET}", {"redact_result": RULES}) is None
    cut = progress_message("é" * 100, {"max_result_bytes": 11})
    assert cut is not None and cut.startswith("é" * 5 + "\n[truncated") and "é" * 6 not in cut
    assert progress_message("step 1", {"max_result_bytes": 100}) == "step 1"
    assert progress_message("step 1", {}) == "step 1"
