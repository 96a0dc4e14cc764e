"""Health of the shared-state backends, for ``/readyz`` and the status components.

Each backend has a ``Probe``: its last known state, set by every operation it does and by
a ping once a second (``SharedState.watch``), so ``/readyz`` names a backend that went down
and turns ready again when it returns, without a restart and without blocking on a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit


def safe_url(url: str) -> str:
    """``url`` without its password (it is shown in errors and on /readyz)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Probe:
    def __init__(self, kind: str, what: str, ping: Callable[[], Awaitable[None]]) -> None:
        self.kind = kind  # "redis" | "postgres"
        self.what = what  # for people: "rate limits (Redis at redis://127.0.0.1:6379/0)"
        self.ping = ping
        self.up = True  # optimistic until the first failure: the start already connected
        self.error: str | None = None
        self.since = time.time()

    def ok(self) -> None:
        if not self.up:
            self.up, self.error, self.since = True, None, time.time()

    def failed(self, e: BaseException) -> None:
        self.error = f"{type(e).__name__}: {e}"
        if self.up:
            self.up, self.since = False, time.time()

    def status(self) -> dict[str, object]:
        doc: dict[str, object] = {"what": self.what, "up": self.up, "since": self.since}
        if self.error is not None and not self.up:
            doc["error"] = self.error
        return doc
