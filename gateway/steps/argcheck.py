"""A quick "surely valid" check of tool arguments for the plainest input schemas.

``ValidateArguments`` asks jsonschema for every call (~60 function calls for a one-property
schema: a validator per keyword, ``evolve`` per descent). Most tools' ``inputSchema`` is only
an object of typed properties with ``required`` names. For those, ``compile_check`` builds a
predicate that is True only when jsonschema would find no error: such a call goes on without
asking it. Anything the predicate does not pass (False) is left to jsonschema, which gives the
refusal and its reasons as before (or passes it: the predicate may be stricter, never looser).

The subset, read as every draft from 4 on reads it (``$schema`` picks the draft; draft 3, and
anything else, is not compiled): the keywords ``type`` (a name or a list of names),
``properties``, ``required``, ``additionalProperties`` (a boolean or such a schema) and
``items`` (one such schema), schemas ``true``, and annotations that never refuse anything
(``title``, ``description``, ``default``, ``examples``, ``$comment``, ``$schema`` at the root,
and ``format``, which the validator asserts only with a format checker: it has none). A type
counts only when no draft could read it otherwise: ``integer`` is an ``int`` (not ``1.0``),
``number`` an ``int`` or ``float``, never a ``bool``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonschema import (
    Draft4Validator,
    Draft6Validator,
    Draft7Validator,
    Draft201909Validator,
    Draft202012Validator,
)

Check = Callable[[Any], bool]

DRAFTS = frozenset(
    {Draft4Validator, Draft6Validator, Draft7Validator, Draft201909Validator, Draft202012Validator}
)
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "format"})
_KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items"}) | _ANNOTATIONS
_ROOT_KEYWORDS = _KEYWORDS | {"$schema"}  # the dialect is named at the root only
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "integer": lambda v: type(v) is int,
    "number": lambda v: type(v) is int or type(v) is float,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}


def _always(_: Any) -> bool:
    return True


def compile_check(schema: Any, *, root: bool = True) -> Check | None:
    """A predicate over an instance (True: jsonschema finds no error in it), or None when
    ``schema`` is outside the subset."""
    if schema is True:
        return _always
    if not isinstance(schema, dict) or not schema.keys() <= (_ROOT_KEYWORDS if root else _KEYWORDS):
        return None
    type_check = _type_check(schema.get("type"))
    if type_check is None:
        return None
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list):
        return None
    if not all(isinstance(r, str) for r in required) or len(set(required)) != len(required):
        return None
    checks: dict[str, Check] = {}
    for key, sub in props.items():
        check = compile_check(sub, root=False)
        if check is None:
            return None
        checks[key] = check
    extra_check = None if extra is False else compile_check(extra, root=False)
    if extra is not False and extra_check is None:
        return None
    items = compile_check(schema["items"], root=False) if "items" in schema else _always
    if items is None:
        return None
    return _node(type_check, checks, tuple(required), extra_check, items)


def _type_check(spec: Any) -> Check | None:
    if spec is None:
        return _always
    names = [spec] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n in _TYPES for n in names):
        return None
    if len(names) == 1:
        return _TYPES[names[0]]
    options = [_TYPES[n] for n in names]
    return lambda v: any(ok(v) for ok in options)


def _node(
    type_check: Check, props: dict[str, Check], required: tuple[str, ...], extra: Check | None, items: Check
) -> Check:
    def check(value: Any) -> bool:
        if not type_check(value):
            return False
        if type(value) is dict:
            for name in required:
                if name not in value:
                    return False
            for key, item in value.items():
                sub = props.get(key, extra)
                if sub is None or not sub(item):
                    return False
        elif type(value) is list and items is not _always:
            return all(items(item) for item in value)
        return True

    return check
