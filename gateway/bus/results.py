"""How a ``bus`` tool's answer is serialised, and what one received message adds to it.

The built-in's result carries its answer twice: in the text content (its JSON) and in
``structuredContent``. ``receive`` measures each message with ``item_bytes`` so a receive
takes only what its result can hold: the same code that builds the result says its size.

``RECEIVE_MAX_BYTES`` is the ceiling of one ``bus__receive`` result, whatever the policy says
(without ``max_result_bytes`` one receive of 1,000 messages returned hundreds of MB). A message
that could never fit it is refused when it is sent (``item_bytes_of_body``), so its sender
learns it, rather than taken alone by a receive and cut.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gateway.policy.decision import RESULT_ENVELOPE_BYTES

if TYPE_CHECKING:  # the SDK is imported by the one function that builds a result: `symbi bus`
    from mcp import types  # reaches this module through the store and needs none of it (~1 s)

RECEIVE_MAX_BYTES = 8 * 1024 * 1024  # one bus__receive result at most (the policy may cap lower)
# a received message's fields other than its body, at most (ids, agent ids, a topic of 128)
ITEM_METADATA_BYTES = 1024


def tool_result(out: dict[str, Any]) -> types.CallToolResult:
    """A bus tool's answer as its MCP result: its JSON as text, and structured."""
    from mcp import types

    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(out))], structured_content=out
    )


def item_bytes(item: dict[str, Any]) -> int:
    """What ``item`` (one message of ``{"messages": [...]}``) adds to the result ``tool_result``
    builds: in the text content (its JSON, escaped again as the JSON string the text is) and in
    ``structuredContent`` (its JSON), with the separators between items."""
    text = json.dumps(item)
    structured = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
    return len(json.dumps(text)) + len(structured) + 4


# what one stored byte of a body (``Sealer.body``: compact, UTF-8) adds to a result at most: a
# DEL (1 byte, kept raw) is "\\u007f" in the text escaped again (7) and itself in the structured
# copy (1); an "é" (2 bytes) is 7 + 2. Was 5, which a body of DELs passed (8 per byte).
ITEM_BYTES_PER_BODY_BYTE = 8
ITEM_KEY_BYTES = 64  # '{"body": ...}' around it, in both copies


def item_bound(stored: int) -> int:
    """At most what a message whose body is ``stored`` bytes as ``Sealer.body`` writes it adds to
    a receive's result, found without serialising the body again."""
    return ITEM_BYTES_PER_BODY_BYTE * stored + ITEM_KEY_BYTES + ITEM_METADATA_BYTES


def may_not_fit_a_receive(data: bytes) -> bool:
    """Whether a message whose stored body is ``data`` might not fit one receive: False
    without serialising the body again for the (default) bodies far under the ceiling."""
    return item_bound(len(data)) > receive_ceiling()


def item_bytes_of_body(body: Any) -> int:
    """At most what a message with ``body`` adds to a receive's result (its metadata counted
    at its largest)."""
    return item_bytes({"body": body}) + ITEM_METADATA_BYTES


def receive_ceiling() -> int:
    """The bytes of messages one receive may take at most (its result within ``RECEIVE_MAX_BYTES``)."""
    return RECEIVE_MAX_BYTES - RESULT_ENVELOPE_BYTES
