"""Log lines any caller can cause without credentials, throttled.

A malformed request, an ``Upgrade`` request, headers or a body that do not arrive in time each
wrote a warning (uvicorn's, two for an upgrade, or the HTTP front's own): one unauthenticated
client opening connections wrote a line per connection, 20,000 lines in 20 s here, as fast as
it could connect. Each of these lines is written once per window; the next one after the window
says how many were left out, so the operator still sees that it happens and how often.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from gateway.server.connections import CLOSED_IDLE, CLOSED_UNTRUSTED, NONE_IDLE

WINDOW_S = 10.0

# the message templates (``LogRecord.msg``) of the lines a caller without credentials causes
NOISY = frozenset(
    {
        "Invalid HTTP request received.",  # uvicorn: a request the parser refuses
        "Unsupported upgrade request.",  # uvicorn: any ``Upgrade: websocket`` request
        # uvicorn's advice after it (the gateway serves no WebSocket: there is nothing to install)
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", "
        "or install 'websockets' or 'wsproto' manually.",
        "Exceeded concurrency limit.",
        "request headers not received within %.0f s: closing",  # gateway.server.sessions
        "request headers over %d bytes: refused (431)",
        "request body not received within %.0f s: closing",
        CLOSED_IDLE,  # gateway.server.connections: past http.max_connections
        CLOSED_UNTRUSTED,
        NONE_IDLE,
    }
)
# the loggers that write them: uvicorn's protocol, the HTTP front's session layer and its
# connection bound
LOGGERS = ("uvicorn.error", "symbi.http.sessions", "symbi.http.connections")


class NoiseThrottle(logging.Filter):
    """Passes a ``NOISY`` line once per ``window_s`` per template; counts the others and names
    their number on the next line it passes. Every other record passes untouched."""

    def __init__(self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # template -> (window start, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.msg
        if not isinstance(key, str) or key not in NOISY:
            return True
        now = self.clock()
        started, left_out = self._windows.get(key, (None, 0))
        if started is not None and now - started < self.window_s:
            self._windows[key] = (started, left_out + 1)
            return False
        self._windows[key] = (now, 0)
        if left_out:
            record.msg = f"{key} ({left_out} more like it in the {self.window_s:.0f} s before, not logged)"
        return True


_THROTTLE = NoiseThrottle()


def throttle_noise() -> None:
    """Put the one throttle on ``LOGGERS`` (once per process; again is a no-op)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _THROTTLE not in logger.filters:
            logger.addFilter(_THROTTLE)
