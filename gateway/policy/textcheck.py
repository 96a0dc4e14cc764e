"""Only valid UTF-8 reaches regorus: it crashes the process on anything else.

regorus (the embedded engine) takes Python ``str`` values and converts them to UTF-8 itself; a
string holding a lone surrogate (``"\\ud800"``) is not valid UTF-8, and regorus does not raise
then: the whole gateway process dies with SIGSEGV (``set_input`` and ``add_data`` alike,
keys and values alike). The MCP parsers (orjson, pydantic) refuse such text, but other
sources make it: ``json.loads`` turns the escape ``"\\ud800"`` into one (a JWT's claims, a
policy data file, a broadcast policy), and ``os.fsdecode`` an undecodable byte. So every
document is checked before it is handed over, and one that fails is refused (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def not_utf8_at(doc: Any) -> str | None:
    """The JSON pointer of the first key or string in ``doc`` that is not valid UTF-8 (a lone
    surrogate), else None. Its own text is always valid UTF-8 (a bad character is written as
    its escape), so it can go into a reason, a log line and the audit record."""
    try:
        orjson.dumps(doc)  # orjson writes only valid UTF-8 and refuses a lone surrogate
    except TypeError:  # orjson.JSONEncodeError is one; it may be something else (a set...)
        return _walk(doc)
    return None


def _walk(doc: Any) -> str | None:
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if not _is_utf8(value):
                return path or "/"
        elif isinstance(value, Mapping):
            for key, item in value.items():
                here = f"{path}/{_segment(key)}"
                if isinstance(key, str) and not _is_utf8(key):
                    return here
                stack.append((item, here))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, f"{path}/{i}") for i, item in enumerate(value))
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _segment(key: Any) -> str:
    """A JSON pointer segment (RFC 6901 escapes) with any bad character as its escape."""
    text = str(key).replace("~", "~0").replace("/", "~1")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
