"""The one Redis client (one connection pool) of a gateway process for ``[state] redis_url``.

``build_state`` (called by the assembly point, ``gateway.assemble``) makes it once and hands
it to every state component on that Redis: the rate limiter, the hand-outs, the hosted
agents' leases and the session agents' board. A component given the client never closes it;
``SharedState.aclose`` does, once, after the gateway's background tasks have ended (a lease's
release on the way out still has its connection). A component built from a bare URL (the
tests, the benchmarks, the CLI) makes and closes its own, as before.

The bus (``[bus] backend = "redis"``) keeps a client of its own: its blocking stream reads
need connections without a socket timeout, which the state's fail-closed commands must have.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError

T = TypeVar("T")

WAKEUP_READ_S = 1.0  # each read of a wake-up channel (below the client's socket timeout or not)


def _itself(sock: socket.socket) -> str | None:
    """Why ``sock`` is not a connection to Redis: connected to itself (or already reset)."""
    try:
        itself = sock.getsockname() == sock.getpeername()
    except OSError as e:  # reset before the check: a failed connect, as redis-py's own
        return f"the connection was lost at once ({e})"
    return "a socket connected to itself, not Redis" if itself else None


class NotItself(Connection):
    """A TCP connection to Redis refused when it is connected to itself: while nothing listens
    on Redis's port, a reconnect may be given that port as its source (it is in the kernel's
    ephemeral range) and connect to itself (TCP simultaneous open), then read its own commands
    back as replies. Refused here, it is a ``ConnectionError`` before any command is misread.
    (``rediss://`` keeps redis-py's own class: a TLS handshake with itself fails anyway.)"""

    async def _connect(self) -> None:
        await super()._connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        sock = self._writer.transport.get_extra_info("socket") if self._writer else None
        why = _itself(sock) if sock is not None else None
        if why is not None:  # (redis-py's connect disconnects on any failure of this)
            raise RedisConnectionError(f"{self.host}:{self.port}: {why}")


class NotItselfSync(redis.connection.Connection):
    """``NotItself`` for the synchronous clients (the CLI's, the start's open-server check)."""

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        why = _itself(sock)
        if why is not None:  # (not yet the connection's: redis-py would not close it)
            sock.close()
            raise RedisConnectionError(f"{self.host}:{self.port}: {why}")
        return sock


def open_redis(url: str, timeout_s: float, *, blocking_reads: bool = False) -> aioredis.Redis:
    """A client on ``url`` whose connects and commands fail after ``timeout_s`` (fail closed:
    a caller waiting on a Redis that does not answer is refused, never left hanging). No
    connection is made until the first command. ``blocking_reads``: no read timeout (the bus's
    blocking stream reads wait longer than any bound), only the connect's."""
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=None if blocking_reads else timeout_s,
        connection_class=NotItself,
    )
    return client


def pong(answered: object) -> None:
    """What redis-py's PING returned (sync or awaited): anything but True (an answer that is
    not PONG: a peer that is not Redis, an echo reading its own PING back) raises
    ``InvalidResponse``, never taken as answered. (``is not True``: a PING not awaited fails.)"""
    if answered is not True:
        raise InvalidResponse("PING was not answered PONG")


def open_sync_redis(url: str, connect_timeout_s: float, timeout_s: float | None = None) -> redis.Redis:
    """A synchronous client on ``url`` (the CLI's, the start's open-server check) that refuses
    a socket connected to itself, as ``open_redis``'s does."""
    # only for redis://: the sync from_url lets this argument replace the URL's own class
    # (rediss:// would lose its TLS, unix:// be dialled as TCP); the async one keeps the URL's
    tcp = {"connection_class": NotItselfSync} if url.startswith("redis://") else {}
    client: redis.Redis = redis.Redis.from_url(
        url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s, **tcp
    )
    return client


async def wakeups(client: aioredis.Redis, channel_name: str, wake: Callable[[], None]) -> None:
    """Call ``wake`` once subscribed to ``channel_name`` (what was published before is read
    then) and at every message on it, until cancelled. Raises ``RedisError``/``OSError`` when
    the channel is lost (the caller subscribes again), also when what answers is not Redis."""
    async with client.pubsub() as channel:
        await _redis_only(channel_name, channel.subscribe(channel_name))
        wake()
        while True:
            read = channel.get_message(ignore_subscribe_messages=True, timeout=WAKEUP_READ_S)
            if await _redis_only(channel_name, read):
                wake()


async def _redis_only(channel_name: str, step: Awaitable[T]) -> T:
    """``step``'s result; any failure raised as ``RedisError``/``OSError``: redis-py parses a
    reply of the wrong shape with IndexError & co (a peer that is not Redis: a socket connected
    to itself reads its own SUBSCRIBE back). Raised as is, it ended the caller's task group and
    the gateway with it. Connecting (the subscribe) reads replies too."""
    try:
        return await step
    except (RedisError, OSError):
        raise
    except Exception as e:
        raise InvalidResponse(f"not a Redis reply on {channel_name} ({type(e).__name__})") from e


class RedisUser:
    """A component on Redis: the process's shared client, or (given none) one of its own."""

    def __init__(self, url: str, timeout_s: float, client: aioredis.Redis | None) -> None:
        self._owns = client is None
        self._r: aioredis.Redis = client if client is not None else open_redis(url, timeout_s)

    async def aclose(self) -> None:
        """Close the client if it is this component's own (the shared one is closed once, by
        ``SharedState.aclose``)."""
        if self._owns:
            await self._r.aclose()
