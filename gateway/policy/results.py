"""The policy's result conditions (``redact_result``, ``max_result_bytes``) on everything of a
call's answer that reaches the client.

- a tool result: ``structuredContent``, each content item (a text, an embedded resource's
  text, a resource link's title and description, the item's ``_meta``) and the result's
  ``_meta``; the cap counts all of it (``result_size``);
- a resource's contents and a prompt's messages, the same way (their cap refuses: no
  ``isError`` form);
- an upstream's JSON-RPC error: its message scrubbed, its data redacted as a result's, and
  both cut to the cap (the data dropped: a cut JSON value would be wrong, not just short);
- the call's progress messages: dropped under ``redact_result`` (prose the key rules cannot
  read), cut to ``max_result_bytes``.

A JSON object or array text is redacted by the rules and written again; prose has no keys,
but recognisable secret values in it are replaced (``gateway.policy.redact``). Work is
proportional to what the result holds: a part that is absent costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    GetPromptResult,
    ReadResourceResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from gateway.context import CallContext, ToolInfo
from gateway.errors import PolicyDenied, UpstreamError
from gateway.policy.redact import redact, scrub_secrets
from gateway.textcheck import not_utf8_at


def result_cap(call: CallContext) -> int | None:
    """The policy's ``max_result_bytes`` for this call, if it sets one (an int, not a bool)."""
    cap = call.decision.conditions.get("max_result_bytes") if call.decision is not None else None
    return cap if isinstance(cap, int) and not isinstance(cap, bool) else None


TRUNCATION_MARK = "\n[truncated by symbi: the result exceeded the policy's max_result_bytes of {cap} bytes]"


def _redact_text(text: str, rules: Sequence[str], where: str) -> tuple[str, bool]:
    """(the text as a result's text is redacted, whether that changed it). A redacted JSON
    text is written again: when its JSON holds the escape ``"\\ud800"`` (``json.loads``
    makes a lone surrogate of it) it would not be valid UTF-8, and the result is refused,
    naming ``where`` (a result the policy's redaction cannot pass on is not passed on)."""
    parsed: Any = None
    if text.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    if isinstance(parsed, dict | list):
        red, n = redact(parsed, rules)
        if not n:
            return text, False
        if (bad := not_utf8_at(red)) is not None:
            reason = f"the JSON of the result's {where} holds text that is not valid UTF-8 at {bad}"
            raise PolicyDenied("result refused: it cannot be redacted", reasons=[reason])
        return json.dumps(red, ensure_ascii=False), True
    scrubbed, n = scrub_secrets(text)  # prose has no keys, but secrets are known by their look
    return scrubbed, n > 0


def _redact_value(value: Any, rules: Sequence[str], where: str) -> Any:
    """A JSON value (``_meta``, an error's data) redacted: a tree by the rules, a string as a text."""
    if isinstance(value, str):
        return _redact_text(value, rules, where)[0]
    if isinstance(value, dict | list):
        return redact(value, rules)[0]
    return value


def _redact_resource(res: Any, rules: Sequence[str], where: str) -> Any:
    update: dict[str, Any] = {}
    if isinstance(res, TextResourceContents):
        text, changed = _redact_text(res.text, rules, f"{where}/text")
        if changed:
            update["text"] = text
    if res.meta:
        update["meta"] = redact(res.meta, rules)[0]
    return res.model_copy(update=update) if update else res


def _redact_item(item: ContentBlock, rules: Sequence[str], where: str) -> ContentBlock:
    """One content item redacted (itself when nothing in it changed)."""
    update: dict[str, Any] = {}
    if isinstance(item, TextContent):
        text, changed = _redact_text(item.text, rules, f"{where}/text")
        if changed:
            update["text"] = text
    elif isinstance(item, EmbeddedResource):
        resource = _redact_resource(item.resource, rules, f"{where}/resource")
        if resource is not item.resource:
            update["resource"] = resource
    elif isinstance(item, ResourceLink):
        for field in ("title", "description"):
            value = getattr(item, field)
            if value and (scrubbed := scrub_secrets(value))[1]:
                update[field] = scrubbed[0]
    if item.meta:
        update["meta"] = redact(item.meta, rules)[0]
    return item.model_copy(update=update) if update else item


def redact_result(result: CallToolResult, rules: Sequence[str]) -> CallToolResult:
    """Redact ``structured_content``, every content item and the result's ``_meta``."""
    if not rules:
        return result
    structured = result.structured_content
    if structured is not None:
        structured, _ = redact(structured, rules)
    content = [_redact_item(item, rules, f"/content/{i}") for i, item in enumerate(result.content)]
    update: dict[str, Any] = {"content": content, "structured_content": structured}
    if result.meta:
        update["meta"] = redact(result.meta, rules)[0]
    return result.model_copy(update=update)


def redact_other(result: Any, rules: Sequence[str]) -> Any:
    """A ``resources/read`` or ``prompts/get`` result redacted as a tool result is (anything
    else, a 2026 input-required result say, carries no content: as it is)."""
    if not rules:
        return result
    update: dict[str, Any] = {}
    if isinstance(result, ReadResourceResult):
        update["contents"] = [
            _redact_resource(c, rules, f"/contents/{i}") for i, c in enumerate(result.contents)
        ]
    elif isinstance(result, GetPromptResult):
        update["messages"] = [
            m.model_copy(update={"content": _redact_item(m.content, rules, f"/messages/{i}/content")})
            for i, m in enumerate(result.messages)
        ]
        if result.description:
            update["description"] = scrub_secrets(result.description)[0]
    else:
        return result
    if result.meta:
        update["meta"] = redact(result.meta, rules)[0]
    return result.model_copy(update=update)


def result_size(result: Any) -> int:
    """Bytes of the result as JSON (what travels to the client)."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8"))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def cap_result(
    result: CallToolResult, max_bytes: int, size: int | None = None, *, tool: ToolInfo | None = None
) -> CallToolResult:
    """Fit a tool result under ``max_bytes``.

    - within the cap: unchanged;
    - a result (not an error result) of a ``tool`` that declares an ``outputSchema``:
      replaced by the ``isError`` result below; its ``structuredContent`` cannot be cut, and a
      cut result without it breaks the schema (a client that checks, as the SDK's does, raises
      instead of reading it);
    - only text content: texts are kept in order up to ``max_bytes`` of text, the last one is
      cut at a UTF-8 boundary and ends with a visible truncation mark; ``structured_content``
      and the upstream's ``_meta`` (the result's and the items') are dropped: they are not
      cut, and would otherwise pass over the cap;
    - any non-text content (image, audio, resource): replaced by an ``isError`` result that
      says the result was too large, since half an image is no use.

    ``size``: ``result_size(result)``, when the caller has it already (else it is measured).
    """
    if size is None:
        size = result_size(result)
    if size <= max_bytes:
        return result
    schema = tool is not None and tool.definition.get("outputSchema") is not None
    if (schema and not result.is_error) or not all(isinstance(c, TextContent) for c in result.content):
        return CallToolResult(
            content=[
                TextContent(
                    type="text", text=f"result of {size} bytes exceeds the policy's cap of {max_bytes} bytes"
                )
            ],
            is_error=True,
        )
    budget = max_bytes
    kept: list[TextContent] = []
    cut = False
    for item in result.content:
        assert isinstance(item, TextContent)
        n = len(item.text.encode("utf-8"))
        if n > budget:
            text = _truncate_utf8(item.text, budget) + TRUNCATION_MARK.format(cap=max_bytes)
            kept.append(TextContent(type="text", text=text))
            cut = True
            break
        kept.append(TextContent(type="text", text=item.text))  # without the item's _meta
        budget -= n
    if not cut:
        # the text fits but structured_content or _meta made it too big: drop those and mark it
        kept.append(TextContent(type="text", text=TRUNCATION_MARK.format(cap=max_bytes).strip()))
    return result.model_copy(update={"content": kept, "structured_content": None, "meta": None})


def _error_size(message: str, data: Any) -> int:
    body = {"code": 0, "message": message, "data": data}
    return len(json.dumps(body, ensure_ascii=False, default=str).encode("utf-8"))


def error_under(err: UpstreamError, conditions: Mapping[str, Any], upstream: str) -> UpstreamError:
    """An upstream's JSON-RPC error (``err.mcp_error``) as the result conditions let it reach
    the client: the message scrubbed and the data redacted (``redact_result``), then, over
    ``max_result_bytes``, the data dropped and the message cut. ``err`` itself when no
    condition applies to results."""
    mcp = err.mcp_error
    rules: Sequence[str] = conditions.get("redact_result") or ()
    cap: int | None = conditions.get("max_result_bytes")
    if not isinstance(mcp, MCPError) or (not rules and cap is None):
        return err
    message, data = mcp.error.message, mcp.error.data
    if rules:
        message = scrub_secrets(message)[0]
        data = _redact_value(data, rules, "error/data")
    if cap is not None and _error_size(message, data) > cap:
        data = None
        if len(message.encode("utf-8")) > cap:
            message = _truncate_utf8(message, cap) + TRUNCATION_MARK.format(cap=cap)
    passed = MCPError(code=mcp.error.code, message=message, data=data)
    return UpstreamError(f"upstream {upstream!r} returned an error: {message}", mcp_error=passed)


def log_data(data: Any, conditions: Mapping[str, Any]) -> Any | None:
    """A log line an upstream sends during a call, as the call's result conditions let it
    reach the client: none under ``redact_result`` (as a progress message), its JSON cut to
    ``max_result_bytes`` (a string then) when over it."""
    if conditions.get("redact_result"):
        return None
    cap = conditions.get("max_result_bytes")
    if cap is None:
        return data
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    if len(text) > cap // 4 and len(text.encode("utf-8")) > cap:
        return _truncate_utf8(text, cap) + TRUNCATION_MARK.format(cap=cap)
    return data


def progress_message(message: str, conditions: Mapping[str, Any]) -> str | None:
    """A call's progress message as its result conditions let it reach the client: none
    under ``redact_result`` (prose the key rules cannot read), cut to ``max_result_bytes``."""
    if conditions.get("redact_result"):
        return None
    cap = conditions.get("max_result_bytes")
    if cap is not None and len(message) > cap // 4 and len(message.encode("utf-8")) > cap:
        return _truncate_utf8(message, cap) + TRUNCATION_MARK.format(cap=cap)
    return message
