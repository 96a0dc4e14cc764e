"""Apply the redaction and size-cap conditions to arguments and tool results.

Redaction rules are strings:
- ``"/headers/authorization"``: a JSON-pointer-like path (RFC 6901 escapes ``~0`` ``~1``;
  array indexes are numbers). Only that location is replaced.
- ``"password"``: a key name, matched case-insensitively at any depth.
A redacted value becomes the string ``"[REDACTED]"``. Inputs are never modified: a deep copy
is returned.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from mcp.types import CallToolResult, TextContent

REDACTED = "[REDACTED]"
TRUNCATION_MARK = "\n[truncated by symbi: the result exceeded the policy's max_result_bytes of {cap} bytes]"


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _redact_pointer(doc: Any, parts: list[str]) -> int:
    node = doc
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if part not in node:
                # header names and the like are case-insensitive in practice: match that way too
                match = next((k for k in node if isinstance(k, str) and k.lower() == part.lower()), None)
                if match is None:
                    return 0
                part = match
            if last:
                node[part] = REDACTED
                return 1
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            if last:
                node[int(part)] = REDACTED
                return 1
            node = node[int(part)]
        else:
            return 0
    return 0


def _redact_keys(doc: Any, keys: frozenset[str]) -> int:
    n = 0
    if isinstance(doc, dict):
        for k in list(doc):
            if isinstance(k, str) and k.lower() in keys:
                doc[k] = REDACTED
                n += 1
            else:
                n += _redact_keys(doc[k], keys)
    elif isinstance(doc, list):
        for item in doc:
            n += _redact_keys(item, keys)
    return n


def redact(doc: Any, rules: Sequence[str]) -> tuple[Any, int]:
    """(a redacted deep copy of ``doc``, how many values were replaced)."""
    out = copy.deepcopy(doc)
    keys = frozenset(r.lower() for r in rules if not r.startswith("/"))
    n = _redact_keys(out, keys) if keys else 0
    for rule in rules:
        if rule.startswith("/") and len(rule) > 1:
            n += _redact_pointer(out, _pointer(rule))
    return out, n


def redact_result(result: CallToolResult, rules: Sequence[str]) -> CallToolResult:
    """Redact ``structured_content`` and every text item that is a JSON object or array.

    Plain prose text has no keys to match and passes unchanged (say so in the policy docs).
    """
    if not rules:
        return result
    structured = result.structured_content
    if structured is not None:
        structured, _ = redact(structured, rules)
    content: list[Any] = []
    for item in result.content:
        if isinstance(item, TextContent) and item.text[:1] in ("{", "["):
            try:
                parsed = json.loads(item.text)
            except ValueError:
                content.append(item)
                continue
            red, n = redact(parsed, rules)
            content.append(
                item.model_copy(update={"text": json.dumps(red, ensure_ascii=False)}) if n else item
            )
        else:
            content.append(item)
    return result.model_copy(update={"content": content, "structured_content": structured})


def result_size(result: Any) -> int:
    """Bytes of the result as JSON (what travels to the client)."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8"))


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[: max(max_bytes, 0)].decode("utf-8", errors="ignore")


def cap_result(result: CallToolResult, max_bytes: int) -> CallToolResult:
    """Fit a tool result under ``max_bytes``.

    - within the cap: unchanged;
    - only text content: texts are kept in order up to ``max_bytes`` of text, the last one is
      cut at a UTF-8 boundary and ends with a visible truncation mark; ``structured_content``
      is dropped (a cut JSON document would be wrong, not just short);
    - any non-text content (image, audio, resource): replaced by an ``isError`` result that
      says the result was too large, since half an image is no use.
    """
    size = result_size(result)
    if size <= max_bytes:
        return result
    if not all(isinstance(c, TextContent) for c in result.content):
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
    for item in result.content:
        assert isinstance(item, TextContent)
        n = len(item.text.encode("utf-8"))
        if n <= budget:
            kept.append(item)
            budget -= n
            continue
        kept.append(
            item.model_copy(
                update={"text": _truncate_utf8(item.text, budget) + TRUNCATION_MARK.format(cap=max_bytes)}
            )
        )
        break
    if len(kept) == len(result.content) and kept[-1] is result.content[-1]:
        # text fits but structured_content made it too big: drop that and mark it
        kept.append(TextContent(type="text", text=TRUNCATION_MARK.format(cap=max_bytes).strip()))
    return result.model_copy(update={"content": kept, "structured_content": None})
