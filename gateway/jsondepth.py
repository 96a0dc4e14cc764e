"""JSON nested deeper than the gateway's steps can walk is refused where it enters.

The MCP parsers take deep documents: orjson (the fast lanes, both ways) up to 1,024 levels,
pydantic's parser about 200. The steps that walk arguments and results (redaction, the policy
input, the audit record, pydantic's dump of a reply) recurse, two Python frames a level in
places: a 900-deep list raised RecursionError, an internal error and a traceback of thousands
of lines in the log per call. So arguments (``gateway.steps.arguments``) and upstream results
(``gateway.upstream.session``) deeper than ``MAX_DEPTH`` are refused, naming the path.

Arguments are also bounded in members (``mcp.max_argument_members``): every key is matched
against the redaction rules and handed to the policy, a few microseconds each on the event
loop, and 4 MB of short keys (~300,000) held every other caller of the gateway for seconds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MAX_DEPTH = 100  # containers inside the arguments object or a result's structuredContent


class TooLarge(NamedTuple):
    """Where a document passed a limit (``.key[0]...``, at most 200 characters) and which."""

    path: str
    problem: str  # "nested deeper than 100 levels", "more than 10000 members"


def too_large(doc: Any, *, max_depth: int = MAX_DEPTH, max_members: int | None = None) -> TooLarge | None:
    """The first place ``doc`` passes a limit, or None: a container nested deeper than
    ``max_depth`` (``doc`` itself is level 1), or, with ``max_members``, more keys and items
    in all than that (the path names the container whose members passed it). Iterative: any
    depth can be measured; one walk for both."""
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    members = 0
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        members += len(node)
        if max_members is not None and members > max_members:
            return TooLarge(path[:200], f"more than {max_members} members")
        for k, v in items:
            if isinstance(v, dict | list):
                where = f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}"
                if depth + 1 > max_depth:
                    return TooLarge(where[:200], f"nested deeper than {max_depth} levels")
                stack.append((v, depth + 1, where))
    return None


def too_deep(doc: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path of the first container nested deeper than ``limit`` in ``doc``, or None."""
    found = too_large(doc, max_depth=limit)
    return None if found is None else found.path
