"""JSON nested deeper than the gateway's steps can walk is refused where it enters.

The MCP parsers take deep documents: orjson (the fast lanes, both ways) up to 1,024 levels,
pydantic's parser about 200. The steps that walk arguments and results (redaction, the policy
input, the audit record, pydantic's dump of a reply) recurse, two Python frames a level in
places: a 900-deep list raised RecursionError, an internal error and a traceback of thousands
of lines in the log per call. So arguments (``gateway.steps.arguments``) and upstream results
(``gateway.upstream.session``) deeper than ``MAX_DEPTH`` are refused, naming the path.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100  # containers inside the arguments object or a result's structuredContent


def too_deep(doc: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path (``.key[0]...``, at most 200 characters) of the first container nested deeper
    than ``limit`` in ``doc`` (``doc`` itself is level 1), or None. Iterative: any depth can
    be measured."""
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, dict | list):
                where = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}"
                if depth + 1 > limit:
                    return where[:200]
                stack.append((v, depth + 1, where))
    return None
