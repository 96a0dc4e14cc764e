"""JSON the gateway's steps cannot walk, or not in reasonable time, is refused where it enters.

The MCP parsers take deep documents: orjson (the fast lanes, both ways) up to 1,024 levels,
pydantic's parser about 200. The steps that walk arguments and results (redaction, the policy
input, the audit record, pydantic's dump of a reply) recurse, two Python frames a level in
places: a 900-deep list raised RecursionError, an internal error and a traceback of thousands
of lines in the log per call. So arguments (``gateway.steps.arguments``) and upstream results
(``gateway.upstream.session``) deeper than ``MAX_DEPTH`` are refused, naming the path.

Both are refused with keys longer than ``MAX_KEY_CHARS``, and arguments past
``mcp.max_argument_members`` keys and items in all: every key is matched against the redaction
rules and handed to the policy on the event loop, a few microseconds each (and more a
character), and 4 MB of short keys (~300,000), or one 3 MB key, held every other caller of
the gateway for 0.6 s to seconds.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

MAX_DEPTH = 100  # containers inside the arguments object or a result's structuredContent
# Longer keys are refused: each key's words are found character by character (NFKC, Unicode
# categories) for the redaction rules: one 3 MB key held the event loop ~0.6 s. 4 KiB holds a path.
MAX_KEY_CHARS = 4096
# pydantic's JSON parser (the SDK's, both fronts) takes NaN, Infinity and 1e400 (inf), which are
# not JSON: the policy saw the float (regorus holds NaN <= 1000 true; OPA could never be asked)
# while the upstream was sent null (pydantic writes them so). So arguments holding one are
# refused, never decided on one value and sent another.
NONFINITE = "a number JSON cannot carry (NaN or an infinity)"


class TooLarge(NamedTuple):
    """Where a document passed a limit (``.key[0]...``, at most 200 characters) and which."""

    path: str
    problem: str  # "nested deeper than 100 levels", "more than 10000 members (mcp.max_argument_members)"


def too_large(
    doc: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_members: int | None = None,
    max_key_chars: int = MAX_KEY_CHARS,
    finite: bool = False,
) -> TooLarge | None:
    """The first place ``doc`` passes a limit, or None: a container nested deeper than
    ``max_depth`` (``doc`` itself is level 1), a key longer than ``max_key_chars``, or, with
    ``max_members``, more keys and items in all than that (the path names the container whose
    members passed it). Iterative: any depth can be measured; one walk for all three."""
    stack: list[tuple[Any, int, str]] = [(doc, 1, "")]
    members = 0
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, dict):
            key = _long_key(node, max_key_chars)
            if key is not None:
                return TooLarge(f"{path}.{key}"[:200], f"a key of more than {max_key_chars} characters")
            items: Any = node.items()
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        members += len(node)
        if max_members is not None and members > max_members:
            return TooLarge(path, f"more than {max_members} members (mcp.max_argument_members)")
        for k, v in items:
            if isinstance(v, dict | list):
                where = (f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")[:200]
                if depth + 1 > max_depth:
                    return TooLarge(where, f"nested deeper than {max_depth} levels")
                stack.append((v, depth + 1, where))
            elif finite and type(v) is float and not math.isfinite(v):
                where = (f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")[:200]
                return TooLarge(where, NONFINITE)
    return None


def _long_key(node: dict[Any, Any], limit: int) -> str | None:
    """A string key of ``node`` longer than ``limit``, or None (measured in C when every key
    is a string, as in parsed JSON)."""
    try:
        if not node or max(map(len, node)) <= limit:
            return None
    except TypeError:  # a key that is not a string (arguments built in code)
        pass
    return next((k for k in node if isinstance(k, str) and len(k) > limit), None)
