"""A tool's JSON Schema (``inputSchema``, ``outputSchema``) made into a jsonschema validator.

The draft is the one the schema's ``$schema`` names (2020-12 when it names none), with no
format checker. A ``$ref`` resolves within the schema document (and the drafts' own
metaschemas) only: jsonschema's default registry fetches any other URI with ``urlopen``
(``file://`` included) on the event loop, so an upstream's schema could have the gateway read
its host's files (and an argument refusal quote them: ``'x' is not one of [...]``) or reach
into its network. Such a ``$ref`` raises ``Unresolvable`` when validation reaches it; the
steps refuse the call then (``unresolved`` says why).
"""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator, validators
from referencing import Registry
from referencing.exceptions import Unresolvable

# nothing but the schema itself and the metaschemas jsonschema adds to every registry
_LOCAL_ONLY: Registry[Any] = Registry()


def compile_schema(schema: Any) -> Any:
    """A validator of ``schema``'s draft, its ``$ref``s kept within it. Raises
    ``SchemaError`` when ``schema`` is not a valid schema of that draft."""
    cls = validators.validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema, registry=_LOCAL_ONLY)


def unresolved(e: Unresolvable) -> str:
    """What to say of a ``$ref`` that does not resolve within its schema (the schema's own text:
    no value of the call's), cut to 200 characters."""
    ref = str(getattr(e, "ref", "") or "")
    return f"a $ref that does not resolve within the schema ({ref[:200]!r}; no other document is fetched)"
