"""The dashboard's sessions: signed cookies, and the record of the ones logged out.

One process (no ``[state] redis_url``) signs with a secret of its own, made at start, and keeps
its logouts in memory: a restart logs everyone out, and a logout holds for as long as the
cookie could. With ``[state] redis_url`` (``symbi serve --workers N``, replicas behind one
front), every process signs with a key derived from the secret they share (``[bus] secret``,
else the data dir's ``bus-secret``: the tools/list cursors' too, under its own HKDF label), so
a login holds on whichever process a request reaches; the logouts are kept on that Redis, for
as long as the cookie could live, so one process's logout holds on all. Redis not answering
refuses the cookie (the login page) and the logout (503): fail closed.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio
from itsdangerous import BadSignature, URLSafeTimedSerializer
from redis.exceptions import RedisError
from starlette.requests import Request

from gateway.bus.crypto import config_secret, derived_key
from gateway.context import is_admin
from gateway.errors import StateUnavailable

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.server.http import HttpState

__all__ = ["BASE", "COOKIE", "MAX_AGE_S", "DashboardSessions"]

_logger = logging.getLogger("symbi.dashboard")

COOKIE = "symbi_session"
MAX_AGE_S = 8 * 3600
BASE = "/d"  # a session's pages: /d/<prefix>/...
PREFIX_BYTES = 24  # 192 bits from ``secrets``: the path cannot be guessed
# the cookie key's HKDF label: never the shared secret itself (the bus and the cursors use it)
COOKIE_KEY_INFO = b"symbi dashboard cookie/v1"
ENDED = "symbi:dashboard:ended:"  # + session id: a logged-out session (Redis, expires with its cookie)


def cookie_key(state: HttpState) -> bytes:
    """The key the cookies are signed with: shared by every process on ``[state] redis_url``
    (derived from their shared secret), else this process's own."""
    if not state.config.state.redis_url:
        return state.cookie_secret
    return derived_key(config_secret(state.config), COOKIE_KEY_INFO)


class DashboardSessions:
    """Signed-cookie sessions bound to an admin API key id and a path prefix."""

    def __init__(self, state: HttpState) -> None:
        self.state = state
        self._signer: URLSafeTimedSerializer | None = None
        self.shared = bool(state.config.state.redis_url)
        # sessions logged out here (session id -> when their cookie expires anyway), without
        # Redis: the cookie itself stays valid for MAX_AGE_S wherever a copy of it is
        self._ended: dict[str, float] = {}

    @property
    def signer(self) -> URLSafeTimedSerializer:
        # made on first use: the shared secret may be the data dir's, which the gateway's
        # start secures (a loose file is refused)
        if self._signer is None:
            self._signer = URLSafeTimedSerializer(cookie_key(self.state), salt="symbi-dashboard")
        return self._signer

    def _redis(self) -> aioredis.Redis:
        gw = self.state.gateway
        client = gw.state.redis if gw is not None and gw.state is not None else None
        if client is None:
            raise StateUnavailable("the dashboard's logouts are kept on [state] redis_url: not connected")
        return client

    def issue(self, key_id: str) -> tuple[str, str]:
        """A new session's cookie value and its path prefix (``/d/<prefix>``)."""
        csrf = secrets.token_urlsafe(24)
        prefix = secrets.token_urlsafe(PREFIX_BYTES)
        payload = {"kid": key_id, "csrf": csrf, "sid": secrets.token_urlsafe(16), "p": prefix}
        return self.signer.dumps(payload), prefix

    async def end(self, sess: dict[str, Any]) -> None:
        """Log ``sess`` out: its cookie is refused from now on, wherever it is presented.

        Raises:
            StateUnavailable: with ``[state] redis_url``, Redis did not record it.
        """
        if self.shared:
            try:
                await self._redis().set(ENDED + sess["sid"], b"1", ex=MAX_AGE_S)
            except (RedisError, OSError) as e:
                raise StateUnavailable(
                    f"the logout could not be recorded on Redis: {type(e).__name__}"
                ) from e
            return
        now = time.time()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        self._ended[sess["sid"]] = now + MAX_AGE_S

    async def _ended_here(self, sid: str) -> bool:
        """Whether session ``sid`` was logged out (Redis not answering: taken as yes)."""
        if not self.shared:
            return sid in self._ended
        try:
            return bool(await self._redis().exists(ENDED + sid))
        except (StateUnavailable, RedisError, OSError) as e:
            _logger.warning("dashboard session refused: its logout record cannot be read (%s)", e)
            return True

    async def current(self, request: Request) -> dict[str, Any] | None:
        """The session payload if the cookie is valid, issued for the path prefix it came with,
        not logged out, and its key is still a live admin key."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            data = self.signer.loads(raw, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("kid"), str):
            return None
        prefix, here = data.get("p"), request.path_params.get("prefix")
        if not isinstance(prefix, str) or not isinstance(here, str) or not hmac.compare_digest(prefix, here):
            return None  # another session's path, or a cookie from before the paths
        sid = data.get("sid")
        if not isinstance(sid, str) or await self._ended_here(sid):  # no id: it could not be logged out
            return None
        # off the event loop: with [state] postgres_url the key store is a round trip
        rec = await anyio.to_thread.run_sync(self.state.auth.keys.get, data["kid"])
        if rec is None or not is_admin(rec.as_principal()):
            return None
        csrf = str(data.get("csrf", ""))
        return {
            "kid": rec.id,
            "principal": rec.principal,
            "csrf": csrf,
            "sid": sid,
            "base": f"{BASE}/{prefix}",
        }
