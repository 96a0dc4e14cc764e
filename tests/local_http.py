"""A standard-library HTTP server run on a daemon thread for the length of a ``with`` block:
the real HTTP peer of tests that need one (a JWKS or ``.well-known`` host, a health endpoint,
an OTLP collector, the server wrk loads)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import HTTPServer
from typing import TypeVar

S = TypeVar("S", bound=HTTPServer)


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """Serve ``server`` until the block ends, then stop it and close its socket."""
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
