"""What a tool's verification compares: the definition its approved hash covers, and when two
definitions are the same."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemapin import SIGNATURE_META_KEY, SchemaPinError, canonicalize

META_KEY = "_meta"


def approved_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """What the approved hash covers: the whole definition a client sees (``title``,
    ``outputSchema``, ``_meta``...), less exactly ``_meta["schemapin/signature"]``."""
    out = dict(tool)
    meta = out.pop(META_KEY, None)
    if isinstance(meta, Mapping):
        rest = {k: v for k, v in meta.items() if k != SIGNATURE_META_KEY}
        if rest:
            out[META_KEY] = rest
    elif meta is not None:
        out[META_KEY] = meta
    return out


def same_json(a: Any, b: Any) -> bool:
    """Whether two definitions are the same JSON, byte for byte in canonical form. Python's ``==``
    calls 1, 1.0 and true equal, and 0 and false: different schemas (``maximum``, ``enum``,
    ``additionalProperties``), so a change between them would go unnoticed, and the catalogue
    would serve the new listing entry under the old verdict and hash. A verdict is kept only for
    the same bytes, so the entry served is, byte for byte, the definition assessed."""
    if a is b:
        return True
    try:
        return canonicalize(a) == canonicalize(b)
    except SchemaPinError:
        return False  # cannot be compared: assessed again, and refused there
