"""Health of the shared-state backends, for ``/readyz`` and the status components.

Each backend has a ``Probe``: its last known state, set by every operation it does and by
a ping once a second (``SharedState.watch``), so ``/readyz`` names a backend that went down
and turns ready again when it returns, without a restart and without blocking on a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

# query parameters redis-py and libpq take a password from (``?password=`` is as good as ``:pw@``)
_SECRET_PARAMS = frozenset({"password", "sslpassword", "ssl_password"})


def safe_url(url: str) -> str:
    """``url`` without its password, in the netloc or the query (it is shown in errors, logs
    and on /readyz)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    hidden = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in query]
    if parts.password is None and hidden == query:
        return url
    netloc = parts.netloc if parts.password is None else f"{parts.username or ''}:***@" + _hostport(parts)
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(hidden, safe="*")))


def _hostport(parts: SplitResult) -> str:
    """``parts``' host and port as a netloc writes them (an IPv6 host in brackets)."""
    host = parts.hostname or ""  # (none: a unix socket's URL)
    host = f"[{host}]" if ":" in host else host
    return host + (f":{parts.port}" if parts.port else "")


class Probe:
    def __init__(
        self, kind: str, what: str, ping: Callable[[], Awaitable[None]], *, where: str | None = None
    ) -> None:
        self.kind = kind  # "redis" | "postgres"
        # for people, and said to callers refused while it is down: "rate limits (Redis)";
        # never where it is (a made-up API key was told the database's user, host and port)
        self.what = what
        self.where = where  # the operator's: the URL without its password (/api/status)
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
        if self.where is not None:
            doc["at"] = self.where
        if self.error is not None and not self.up:
            doc["error"] = self.error
        return doc


def lets_anyone_in(url: str, timeout_s: float) -> bool:
    """Whether the Redis or PostgreSQL server at ``url`` admits a client that gives no password.

    Checked once at start (``gateway.assemble``): an unsandboxed upstream runs as another user
    with the network its uid has, so a Redis without ``requirepass`` (its default, and how
    the shipped compose file ran it) or a PostgreSQL with ``trust`` for the gateway's user
    let it change the shared rate limits and call counts, drop bus messages, or rewrite pins,
    API keys and the policy. A server that is down or asks for a password says False here (a
    down one is the probes' and the first operation's to report)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":  # a socket file: its mode decides who may connect
        try:
            return bool(os.stat(parts.path).st_mode & 0o002)
        except OSError:
            return False
    if parts.scheme.startswith("postgres"):
        import psycopg

        try:  # the URL's user, no password from anywhere (the URL, PGPASSWORD, a passfile)
            with psycopg.connect(
                url, password="", passfile=os.devnull, connect_timeout=max(1, round(timeout_s))
            ):
                return True
        except psycopg.Error:
            return False
    import redis

    from gateway.state.redisclient import open_sync_redis, pong  # (connected to itself: down)

    bare = urlunsplit(parts._replace(netloc=_hostport(parts)))
    try:
        with open_sync_redis(bare, timeout_s, timeout_s) as r:
            pong(r.ping())
            return True
    except redis.RedisError:  # (down, asks for a password, or not Redis: ``pong``)
        return False
