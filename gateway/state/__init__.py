"""State shared by gateway replicas (``[state]``): one backend interface per kind of state,
an in-process default and a shared implementation on an existing engine.

- rate limits: ``LocalRateLimiter`` (``CallCounters``) | ``RedisRateLimiter`` (``state.redis_url``)
- the links upstreams hand out: the data dir's ``SqliteHandOuts`` | ``RedisHandOuts`` (``state.redis_url``)
- tool records, approvals, revocations: the data dir's SQLite (``ToolStateStore``) |
  ``PgToolStateStore`` (``state.postgres_url``); SchemaPin key pins (``PgPinStore``) and
  accepted screening findings (``PgAcceptedFindings``) likewise

``build_state`` makes them from the config; ``SharedState.watch`` is the gateway's
background task that keeps each backend's health current for ``/readyz``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import redis.asyncio as aioredis

from gateway.config.model import Config
from gateway.policy.counters import CallCounters
from gateway.state.handouts import RedisHandOuts, SqliteHandOuts
from gateway.state.health import Probe, lets_anyone_in, safe_url
from gateway.state.limiter import LocalRateLimiter, RateLimiter, RedisRateLimiter
from gateway.state.redisclient import open_redis
from gateway.verify.state import ToolStates

_logger = logging.getLogger("symbi.state")

if TYPE_CHECKING:
    from gateway.runtime.sessionorders import SessionAgents
    from gateway.state.accepted import PgAcceptedFindings
    from gateway.state.pins import PgPinStore
    from gateway.state.postgres import Postgres

__all__ = [
    "Changes",
    "LocalRateLimiter",
    "Probe",
    "RateLimiter",
    "RedisRateLimiter",
    "SharedState",
    "build_state",
    "open_postgres",
    "safe_url",
]


class Changes:
    """Wakes the approvals poll early: PostgreSQL's NOTIFY of a change (``Postgres.listen``)."""

    def __init__(self) -> None:
        self._pending = False
        self._event: anyio.Event | None = None  # made on the event loop, when one waits

    def set(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return on a change, or after ``timeout`` seconds (the poll's own interval)."""
        if not self._pending:
            self._event = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._event.wait()
            self._event = None
        self._pending = False


@dataclass
class SharedState:
    limiter: RateLimiter
    tool_state: ToolStates | None = None  # None: the verifier's SQLite in the data dir
    probes: list[Probe] = field(default_factory=list)
    interval_s: float = 1.0
    postgres: Postgres | None = None  # imported only when configured
    pins: PgPinStore | None = None  # None: the verifier's SQLite in the data dir
    accepted: PgAcceptedFindings | None = None  # None: the data dir's screening-accepted.json
    changes: Changes | None = None  # PostgreSQL's NOTIFY of an approvals change (None: poll only)
    handouts: RedisHandOuts | SqliteHandOuts | None = None  # every replica's, or the data dir's
    redis: aioredis.Redis | None = None  # the process's one client on [state] redis_url
    sessions: SessionAgents | None = None  # where every process's session agents live (Redis)

    @property
    def shared(self) -> bool:
        return bool(self.probes)

    def status(self) -> dict[str, dict[str, object]]:
        return {p.kind: p.status() for p in self.probes}

    async def probe_once(self) -> None:
        for p in self.probes:
            try:
                with anyio.fail_after(self.interval_s * 2):
                    await p.ping()
            except Exception as e:  # noqa: BLE001 - any failure means "down"; the probe records why
                p.failed(e)
            else:
                p.ok()

    def close(self) -> None:
        if self.postgres is not None:
            self.postgres.close()
        if isinstance(self.handouts, SqliteHandOuts):
            self.handouts.close()

    async def watch(self, _gw: object) -> None:
        """Background task: refresh every backend's health."""
        while True:
            await self.probe_once()
            await anyio.sleep(self.interval_s)

    async def aclose(self) -> None:
        """Close the Redis client, once, when the gateway stops (``Gateway.running``, after its
        background tasks have ended: a lease released on the way out still had it)."""
        r, self.redis = self.redis, None
        if r is not None:
            await r.aclose()


def open_postgres(config: Config) -> Postgres | None:
    """``[state] postgres_url``'s connection pool, opened and its schema migrated, or None
    without one: the one construction from the config, for the gateway (``build_state``), the
    API keys (``gateway.server.auth.open_api_keys``) and the CLI's stores (``gateway.cli.stores``).

    Raises:
        StateUnavailable: PostgreSQL cannot be reached at start (naming where).
    """
    st = config.state
    if st.postgres_url is None:
        return None
    from gateway.state.postgres import Postgres

    return Postgres(st.postgres_url, timeout_s=st.timeout_s).open()


def build_state(config: Config, counters: CallCounters) -> SharedState:
    """The backends ``[state]`` names; PostgreSQL is connected and migrated here (a start
    that cannot reach it fails with ``StateUnavailable`` naming it)."""
    # here, not at the top: gateway.handouts imports the MCP SDK (~1 s), which the admin CLI's
    # users of this package (the stores, the leases) never need
    from gateway.handouts import PER_UPSTREAM

    st = config.state
    state = SharedState(LocalRateLimiter(counters), interval_s=st.probe_interval_s)
    if st.redis_url is not None:
        # one client, one connection pool, for every component on this Redis (closed by aclose)
        state.redis = r = open_redis(st.redis_url, st.timeout_s)
        limiter = RedisRateLimiter(st.redis_url, counters, timeout_s=st.timeout_s, client=r)
        state.limiter = limiter
        state.probes.append(limiter.probe)
        state.handouts = RedisHandOuts(
            st.redis_url, timeout_s=st.timeout_s, per_upstream=PER_UPSTREAM, client=r
        )
    else:
        state.handouts = SqliteHandOuts(config.handouts_path, per_upstream=PER_UPSTREAM)
    pg = open_postgres(config)
    if pg is not None:
        from gateway.state.accepted import PgAcceptedFindings
        from gateway.state.pins import PgPinStore
        from gateway.state.postgres import PgToolStateStore

        state.postgres = pg
        state.tool_state = PgToolStateStore(pg)
        state.pins = PgPinStore(pg)
        state.accepted = PgAcceptedFindings(pg)
        state.changes = Changes()
        state.probes.append(pg.probe)
    return state


def warn_open_backends(config: Config) -> list[str]:
    """Warn, at every start, of each shared-state or bus server that lets in a client giving no
    password (``health.lets_anyone_in``); the URLs (passwords hidden) it warned of."""
    urls = [config.state.redis_url, config.state.postgres_url]
    if config.bus.backend == "redis":
        urls.append(config.bus.url)
    warned = []
    for url in dict.fromkeys(u for u in urls if u is not None):
        if lets_anyone_in(url, config.state.timeout_s):
            warned.append(safe_url(url))
            _logger.warning(
                "%s lets in clients that give no password: any process that reaches it, upstream servers "
                "included, can change what the gateway keeps there (rate limits, call counts, bus messages, "
                "pins, API keys, the policy); require one (Redis: requirepass; PostgreSQL: scram-sha-256 in "
                "pg_hba.conf) and put it in the URL",
                safe_url(url),
            )
    return warned
