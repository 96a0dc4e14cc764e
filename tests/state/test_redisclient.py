"""What answers on ``[state] redis_url`` may not be Redis: a socket connected to itself (a
client's port chosen equal to a stopped server's, in the ephemeral range) reads back its own
commands, as an echoing peer does. Its replies are refused as Redis's errors: a wake-up
channel is lost (its task subscribes again) and the probe says down. An IndexError raised out
of a wake-up channel ended the session agents' and the suspended principals' task groups, and
the gateway with them (/readyz 503 without its state components)."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import ConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from gateway.assemble import make_gateway
from gateway.bus.redis_backend import RedisBackend
from gateway.config.load import load_config
from gateway.policy.counters import CallCounters
from gateway.state import RedisRateLimiter
from gateway.state.redisclient import NotItself, NotItselfSync, open_redis, open_sync_redis, wakeups
from tests._echo import echo_redis_url
from tests.conftest import free_port, write_config
from tests.state.engines import Redis

pytestmark = pytest.mark.anyio


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    async with echo_redis_url() as url:
        yield url


async def test_a_wakeup_channel_on_a_peer_that_is_not_redis_is_lost_as_a_redis_error(echo_url: str) -> None:
    client = open_redis(echo_url, 1.0)
    try:
        with anyio.fail_after(10), pytest.raises(RedisError):  # the bound of the wait
            await wakeups(client, "symbi:test:wake", lambda: None)
    finally:
        await client.aclose()


async def test_a_ping_not_answered_pong_is_a_failure(echo_url: str) -> None:
    limiter = RedisRateLimiter(echo_url, CallCounters(), timeout_s=1.0)
    try:
        with pytest.raises(RedisError):
            await limiter.ping()
    finally:
        await limiter.aclose()


def _channels_lost(records: list[logging.LogRecord]) -> set[str]:
    """The loggers of the wake-up channels seen lost as a Redis error (not another failure)."""
    lost = set()
    for r in records:
        args = r.args if isinstance(r.args, tuple) else ()  # (a log record's args: a tuple here)
        if r.levelno == logging.DEBUG and args and isinstance(args[0], RedisError):
            lost.add(r.name)
    return lost


async def test_a_gateway_on_a_peer_that_is_not_redis_keeps_running_and_says_it_is_down(
    tmp_path: Path, echo_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    toml = f"""
        [sandbox]
        code_tools = false
        [state]
        redis_url = "{echo_url}"
        timeout_s = 1
        probe_interval_s = 0.2
        """
    gw = make_gateway(load_config(write_config(tmp_path, toml)))
    assert gw.state is not None and gw.state.sessions is not None  # both wake-up channels run
    channels = {"symbi.runtime.holds", "symbi.runtime.sessionorders"}
    with caplog.at_level(logging.DEBUG, logger="symbi.runtime"):
        async with gw.running():
            with anyio.fail_after(20):  # the probe pings it (a bound, not a timing)
                while gw.state.status()["redis"]["up"] is not False:
                    await anyio.sleep(0.1)
            with anyio.fail_after(20):  # both wake-up channels read the echo and are lost
                while _channels_lost(caplog.records) != channels:
                    await anyio.sleep(0.05)


class _FromItsOwnPort(NotItself):
    """Connects from the port it connects to: on Linux a real socket connected to itself
    (TCP simultaneous open), as a reconnect given a stopped Redis's port as its source is."""

    def _connection_arguments(self) -> Mapping[str, object]:
        return {**super()._connection_arguments(), "local_addr": (self.host, self.port)}


async def test_a_socket_connected_to_itself_is_refused_at_connect() -> None:
    pool = ConnectionPool(
        connection_class=_FromItsOwnPort, host="127.0.0.1", port=free_port(), socket_connect_timeout=2
    )
    client = aioredis.Redis(connection_pool=pool)
    try:
        with anyio.fail_after(10), pytest.raises(RedisConnectionError):  # the bound of the wait
            await client.ping()
    finally:
        await client.aclose()


def test_the_state_and_bus_clients_refuse_a_socket_connected_to_itself() -> None:
    state = open_redis("redis://127.0.0.1:1", 1.0).connection_pool
    assert state.connection_class is NotItself and state.connection_kwargs["socket_timeout"] == 1.0
    bus = RedisBackend("redis://127.0.0.1:1")._r.connection_pool  # (made by open_redis too)
    assert bus.connection_class is NotItself and bus.connection_kwargs["socket_timeout"] is None


def test_the_async_clients_keep_a_unix_socket_and_tls_url_their_own_connection() -> None:
    # the sync from_url lets a connection_class replace the URL's own (TLS dialled in clear):
    # the async one's URL wins; were that to change, rediss:// would lose its TLS here too
    unix = open_redis("unix:///nowhere/redis.sock", 1.0).connection_pool.connection_class
    assert issubclass(unix, redis.asyncio.connection.UnixDomainSocketConnection)
    tls = open_redis("rediss://127.0.0.1:1/0", 1.0).connection_pool.connection_class
    assert issubclass(tls, redis.asyncio.connection.SSLConnection)


class _SelfConnected(redis.connection.Connection):
    """The synchronous twin's real socket connected to itself: bound to the port it connects
    to, on which nothing listens (redis-py's own connect binds no source)."""

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # each retry binds it again
        sock.settimeout(self.socket_connect_timeout)
        sock.bind((self.host, self.port))
        sock.connect((self.host, self.port))
        return sock


class _SyncFromItsOwnPort(NotItselfSync, _SelfConnected):
    """``NotItselfSync``'s check over a socket connected to itself."""


def test_a_sync_socket_connected_to_itself_is_refused_at_connect() -> None:
    pool = redis.ConnectionPool(
        connection_class=_SyncFromItsOwnPort, host="127.0.0.1", port=free_port(), socket_connect_timeout=2
    )
    client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))  # (one connect)
    try:
        with pytest.raises(RedisConnectionError):  # (its own PING read back was False: not an error)
            client.ping()
    finally:
        client.close()


def test_the_sync_clients_refuse_a_socket_connected_to_itself() -> None:
    # (the CLI's bus client and the start's open-server check are made by it)
    assert open_sync_redis("redis://127.0.0.1:1", 1.0).connection_pool.connection_class is NotItselfSync


def test_the_sync_clients_keep_a_unix_socket_and_tls_url_their_own_connection(tmp_path: Path) -> None:
    # redis-py's sync from_url lets a connection_class argument replace the URL's own: a unix://
    # client was dialled as TCP, a rediss:// one lost its TLS. A real redis-server on a socket.
    server = Redis(tmp_path, unix_socket=True)
    server.start()
    try:
        assert open_sync_redis(server.url, 2.0, 2.0).ping() is True
    finally:
        server.stop()
    tls = open_sync_redis("rediss://127.0.0.1:1", 1.0).connection_pool.connection_class
    assert issubclass(tls, redis.connection.SSLConnection)
