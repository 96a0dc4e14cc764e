"""The downstream caller's capabilities on a 2026-07-28 upstream.

One upstream session serves every client, so the upstream would otherwise see the gateway's
capabilities. On a 2026-07-28 upstream they travel in every request's ``_meta``: the caller
of the request in progress is held in ``DOWNSTREAM_CAPABILITIES`` (set by
``gateway.upstream.eras.on_behalf_of``) and stamped on each request the session sends, so
the upstream sees the real caller's capabilities (and refuses what that caller cannot do).
"""

from __future__ import annotations

import contextvars
import logging
import weakref
from typing import Any

from mcp import ClientSession

from gateway.compat import SdkChanged, stamp_requests

_logger = logging.getLogger("symbi.upstream")

DOWNSTREAM_CAPABILITIES: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "symbi_downstream_session", default=None
)  # holds a weak reference to the caller's ServerSession; serialised only when a 2026-era upstream
# stamps a request. Weak: asyncio keeps cancelled timers (and the context they captured) until
# their deadline, which would otherwise keep every recently closed session alive.

_CAPS_META_KEY = "io.modelcontextprotocol/clientCapabilities"


def downstream_ref(session: Any) -> Any:
    """The value to put in ``DOWNSTREAM_CAPABILITIES`` for ``session`` (None for none)."""
    return weakref.ref(session) if session is not None else None


def forward_caller_capabilities(session: ClientSession) -> None:
    """Stamp the current caller's capabilities on every request ``session`` sends."""

    def with_caller(data: dict[str, Any]) -> None:
        ref = DOWNSTREAM_CAPABILITIES.get()
        caller = ref() if ref is not None else None
        caps = caller.client_capabilities if caller is not None else None
        if caps is not None:
            meta = data.setdefault("params", {}).setdefault("_meta", {})
            meta[_CAPS_META_KEY] = caps.model_dump(by_alias=True, mode="json", exclude_none=True)

    try:
        stamp_requests(session, with_caller)
    except SdkChanged as e:  # keep the gateway's own capabilities; tests/test_compat.py names the change
        _logger.warning("cannot forward client capabilities upstream: %s", e)
