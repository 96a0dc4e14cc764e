"""Warn on every call made while a protection is turned off (never only at start).

In the chain only when the config turns something off (``Config.unsafe_options``); the
runtime mode ``production`` refuses those options at load, so there this step never runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gateway.chain import CallNext
from gateway.config.model import UnsafeOption
from gateway.context import CallContext

_logger = logging.getLogger("symbi.unsafe")


class WarnUnsafe:
    """Logs one warning per call naming each unsafe option in force (and who called)."""

    def __init__(self, options: Sequence[UnsafeOption]) -> None:
        self._text = "; ".join(f"{o.key} ({o.effect})" for o in options)

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        if self._text:
            _logger.warning(
                "UNSAFE: %s %s by %s under %s", call.kind, call.target, call.principal.id, self._text
            )
        if call.principal.kind == "anonymous":
            _logger.warning(
                "UNSAFE: %s %s by the anonymous principal (http.unsafe_anonymous_principal)",
                call.kind,
                call.target,
            )
        return await call_next(call)
