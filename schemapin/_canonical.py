"""SchemaPin canonical JSON ("schemapin-v1") and strict parsing of wire text.

The rule is the reference's, byte for byte::

    json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")

applied to the object *as parsed from the wire text* by the stdlib ``json`` module, so that
``1`` and ``1.0`` stay different (they sign differently). Where the reference accepts input
that has no single meaning (duplicate keys, NaN, lone surrogates) we refuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, NoReturn

from ._errors import (
    CanonicalizationUnsupported,
    DocumentTooDeep,
    DocumentTooLarge,
    DuplicateKey,
    InvalidJSON,
    LoneSurrogate,
    NonFiniteNumber,
    UnsupportedValue,
)

CANONICALIZATION = "schemapin-v1"
MAX_BYTES = 1024 * 1024  # a tool definition is a few KiB; 1 MiB leaves room and bounds work
MAX_DEPTH = 64


def _reject_constant(name: str) -> NoReturn:
    raise NonFiniteNumber(f"{name} is not a JSON number", token=name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(f"duplicate object key {key!r}", key=key)
        out[key] = value
    return out


def parse_json(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON wire text strictly, keeping the int/float distinction.

    Raises a :class:`CanonicalizationFailed` subclass: ``DocumentTooLarge``, ``InvalidJSON``
    (not UTF-8 or not JSON), ``DuplicateKey``, ``NonFiniteNumber``, ``LoneSurrogate``,
    ``DocumentTooDeep``.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > max_bytes:
        raise DocumentTooLarge(f"document is {len(raw)} bytes, over the {max_bytes}-byte cap", size=len(raw))
    if isinstance(text, bytes):
        try:
            text = raw.decode("utf-8")  # strict: no BOM sniffing, no replacement characters
        except UnicodeDecodeError as e:
            raise InvalidJSON(f"not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise DocumentTooDeep(f"document nests deeper than {max_depth}") from None
    except json.JSONDecodeError as e:
        raise InvalidJSON(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # e.g. an integer over Python's int-string conversion limit
        raise InvalidJSON(f"not JSON: {e}") from None
    check_value(obj, max_depth=max_depth)
    return obj


def _check_str(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise LoneSurrogate(
            "string holds a lone UTF-16 surrogate",
            text=s.encode("utf-8", "backslashreplace").decode("ascii")[:80],
        ) from None


def check_value(obj: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Check that ``obj`` is plain JSON data the canonical form is defined for.

    Raises ``UnsupportedValue``, ``NonFiniteNumber``, ``LoneSurrogate`` or ``DocumentTooDeep``.
    """
    # Iterative walk: a hostile nesting depth must not blow the Python stack.
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_str(value)
        elif value is None or isinstance(value, (bool, int)):
            pass
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise NonFiniteNumber(f"{value!r} is not a JSON number")
        elif isinstance(value, (dict, list)):
            if depth > max_depth:
                raise DocumentTooDeep(f"document nests deeper than {max_depth}", max_depth=max_depth)
            if isinstance(value, dict):
                for k, v in value.items():
                    if not isinstance(k, str):
                        raise UnsupportedValue(f"object key {k!r} is not a string")
                    _check_str(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in value)
        else:
            raise UnsupportedValue(f"{type(value).__name__} is not a JSON value")


def canonicalize(obj: Any, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> bytes:
    """Return the SchemaPin canonical UTF-8 bytes of ``obj`` (a parsed JSON value).

    Raises a :class:`CanonicalizationFailed` subclass when ``obj`` is not plain, finite,
    well-formed JSON data or is over the caps.
    """
    check_value(obj, max_depth=max_depth)
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False)
    data = text.encode("utf-8")
    if len(data) > max_bytes:
        raise DocumentTooLarge(
            f"canonical form is {len(data)} bytes, over the {max_bytes}-byte cap", size=len(data)
        )
    return data


def definition_hash(tool: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of ``tool``: the identity of a definition.

    Equal to the hex of the 32 bytes the reference signs (``canonicalize_and_hash``).
    """
    return hashlib.sha256(canonicalize(tool)).hexdigest()


def require_canonicalization(name: str | None) -> None:
    """Accept an absent or ``schemapin-v1`` canonicalization name (SchemaPin 1.4); refuse others."""
    if name is not None and name != CANONICALIZATION:
        raise CanonicalizationUnsupported(
            f"canonicalization {name!r} is not supported", canonicalization=name
        )
