"""What regorus must not be given in a policy input: text that is not UTF-8 (it would kill
the process: ``gateway.textcheck``) and a NUL in a globbed name. Denied before evaluation,
with the place named."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway.context import Decision
from gateway.policy.decision import deny
from gateway.textcheck import not_utf8_at

log = logging.getLogger("symbi.policy")

# The input's names the shipped policy globs: regorus' glob.match fails the whole evaluation
# on a NUL (its internal placeholder), a deny that cost a rebuilt engine (~17 ms on the event
# loop) per such request: a resources/read of a URI with a NUL that a template matched.
_GLOBBED: tuple[tuple[str, ...], ...] = (
    ("target",),
    ("topic",),
    ("tool", "name"),
    ("recipient", "principal"),
    ("memory", "base"),
)


def _nul_at(input: Mapping[str, Any]) -> str | None:
    """The JSON pointer of a globbed name (``_GLOBBED``) holding a NUL, else None."""
    for path in _GLOBBED:
        value: Any = input
        for part in path:
            # a dict first: the abc check of Mapping costs ~1 us a step, on every decision
            if value is None or (type(value) is not dict and not isinstance(value, Mapping)):
                value = None
                break
            value = value.get(part)
        if type(value) is str and "\x00" in value:
            return "/" + "/".join(path)
    return None


def refused_text(input: Mapping[str, Any]) -> Decision | None:
    """The deny for an input regorus must not be given (``_not_utf8``, ``_nul_at``), else None."""
    bad = not_utf8_at(input)
    if bad is not None:
        return _not_utf8(bad)
    nul = _nul_at(input)
    if nul is not None:
        log.warning("policy input refused: the name at %s holds a NUL character", nul)
        return deny(f"policy input refused: the name at {nul} holds a NUL character")
    return None


def _not_utf8(where: str) -> Decision:
    """The deny for an input regorus must not see: it would kill the process (gateway/textcheck.py)."""
    log.error("policy input refused: the text at %s is not valid UTF-8", where)
    return deny(f"policy input refused: the text at {where} is not valid UTF-8")
