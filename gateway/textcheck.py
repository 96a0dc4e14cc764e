"""Text that is not valid UTF-8 (a lone surrogate) is refused where it enters.

regorus (the embedded engine) takes Python ``str`` values and converts them to UTF-8 itself; a
string holding a lone surrogate (``"\\ud800"``) is not valid UTF-8, and regorus does not raise
then: the whole gateway process dies with SIGSEGV (``set_input`` and ``add_data`` alike,
keys and values alike). Most other parts raise instead (``str.encode``, orjson, pydantic's
JSON dump, sqlite3, psycopg, redis, protobuf, prometheus): an identity that holds such text
fails the call with an internal error and no audit record. The MCP parsers (orjson, pydantic)
refuse it, but other sources make it: ``json.loads`` turns the escape ``"\\ud800"`` into one
(a JWT's claims, an API key file, a policy data file, a broadcast policy), and Python decodes
argv, the environment and file names with ``surrogateescape``. So each such boundary checks
its text here and refuses it (fail closed): the JWT claims and API key records
(gateway/server/auth.py), the configuration (gateway/config/load.py), the CLI's arguments
(gateway/cli), an upstream's answers (gateway/upstream/stdio.py), and every policy input and
data document before regorus sees it (gateway/policy).
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


def shown(text: str) -> str:
    """``text`` with any character that is not valid UTF-8 written as its escape (``\\udcff``):
    for a log line or a reason (a logging handler writing UTF-8 loses a record holding one)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _segment(key: Any) -> str:
    """A JSON pointer segment (RFC 6901 escapes) with any bad character as its escape."""
    return shown(str(key).replace("~", "~0").replace("/", "~1"))
