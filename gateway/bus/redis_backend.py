"""The Redis backend: one stream per inbox, read through a consumer group (at-least-once
across gateway processes), acknowledged and deleted when settled.

Keys (prefix ``symbi:bus:``): ``inbox:<agent>`` streams (fields h, n, c, s, e = the message
and its expiry), ``keys`` (public key directory, hash), ``subs:exp``, ``subs:of:<agent>``
(the topic subscriptions: ``gateway.bus.redis_subs``), ``procs``
and ``holds:<process>`` (the agents live on each gateway process), ``layout`` (a marker),
``seen:<agent>:<id>`` (replay window, expiring), ``stats`` (counters, hash). Only ciphertext
ever reaches Redis. A Redis that cannot be reached is ``BusUnavailable`` (a send fails with a
clear error); the client reconnects by itself on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar, cast

import anyio.to_thread
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.bus.backend import COUNTERS, Outcome, Pending, StoredMessage
from gateway.bus.counts import Caps, Counts
from gateway.bus.crypto import PublicKeys
from gateway.bus.message import SecureMessage
from gateway.bus.redis_subs import BEAT_S, LEAVE_SUBS, RedisSubscriptions
from gateway.errors import BusBufferFull, BusError, BusUnavailable
from gateway.logs import Outage
from gateway.state.health import safe_url
from gateway.state.redisclient import open_redis, open_sync_redis, pong

_logger = logging.getLogger("symbi.bus")

PREFIX = "symbi:bus:"
GROUP = "symbi"
CLAIM_IDLE_MS = 30_000  # an entry fetched by a consumer that died is taken over after this

# XADD only when fewer than ARGV[1] entries wait (atomic: a full inbox never grows)
_ENQUEUE = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
redis.call('HINCRBY', KEYS[2], 'sent', 1)
return redis.call('XADD', KEYS[1], '*', 'h', ARGV[2], 'n', ARGV[3], 'c', ARGV[4], 's', ARGV[5], 'e', ARGV[6])
"""

# an agent that ended for good: its subscriptions (``gateway.bus.redis_subs``), the requests
# it may still answer (``gateway.bus.redis_counts``) and its inboxes; with ARGV[3] = '1'
# (``forget_agent``) also its directory entry and its name (if still its), else the entry
# stays (what it sent is verified with it). KEYS: keys, names, subs:exp, open, open:q, open:n,
# subs:of:<agent>, subs:made:<agent>, holds:<me>, inboxes...; ARGV: agent, name, forget
_LEAVE = (
    LEAVE_SUBS
    + """
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], ARGV[2]) end
end
leave_subs(KEYS[3], KEYS[7], KEYS[8], ARGV[1], KEYS[9])
local mine = ARGV[1] .. '\\0'
for _, q in ipairs(redis.call('ZRANGEBYLEX', KEYS[5], '[' .. mine, '(' .. ARGV[1] .. '\\1')) do
  redis.call('HDEL', KEYS[4], mine .. string.sub(q, #mine + 22))
end
redis.call('ZREMRANGEBYLEX', KEYS[5], '[' .. mine, '(' .. ARGV[1] .. '\\1')
redis.call('ZREM', KEYS[6], ARGV[1])
for i = 10, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""
)

# the open requests (gateway.bus.redis_counts): open, open:q, open:n, open:seq
OPEN_KEYS = (PREFIX + "open", PREFIX + "open:q", PREFIX + "open:n", PREFIX + "open:seq")

T = TypeVar("T")


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, *, consumer: str | None = None) -> None:
        self.url = url
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._r: aioredis.Redis = open_redis(url, 2, blocking_reads=True)
        self._enqueue = self._r.register_script(_ENQUEUE)
        self._leave = self._r.register_script(_LEAVE)
        # (its own name in ``procs``: two backends in one Python process are two processes)
        self.subs = RedisSubscriptions(self._r, PREFIX, self.run, f"{self.consumer}-{secrets.token_hex(4)}")
        self._groups: set[str] = set()
        self._beat: asyncio.Task[None] | None = None

    @property
    def redis(self) -> aioredis.Redis:
        return self._r

    def counts(self, caps: Caps) -> Counts:
        from gateway.bus.redis_counts import RedisCounts  # (it builds on this module)

        return RedisCounts(self, caps)

    async def inbox_key(self, inbox: str) -> str:
        """The stream of ``inbox``, its consumer group made if need be."""
        key = self._inbox(inbox)
        await self._group(key)
        return key

    async def run(self, aw: Awaitable[T] | T) -> T:
        """A command or script on this Redis (also ``RedisCounts``'): ``BusUnavailable`` when it
        cannot be reached. redis-py types its async commands as "Awaitable[T] | T"."""
        try:
            return await aw if inspect.isawaitable(aw) else aw
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            # said to callers: not where it is nor Redis's text, which names the address
            # (debug: once per refused operation while it is down; the config names the server)
            _logger.debug("the bus backend (Redis at %s) cannot be reached: %r", safe_url(self.url), e)
            raise BusUnavailable(
                f"the bus backend (Redis) cannot be reached ({type(e).__name__})",
                reasons=["bus backend unreachable (bus.url)"],
            ) from None
        except ResponseError as e:
            if "NOGROUP" in str(e):
                self._groups.clear()  # Redis lost its data (restart without persistence): made again
                raise _NoGroup(str(e)) from None
            raise BusError(
                f"the bus backend (Redis at {safe_url(self.url)}) refused a command: {e}",
                reasons=["bus backend error (bus.url)"],
            ) from None

    async def start(self) -> None:
        if self._beat is None:  # (beating even if Redis cannot be reached yet)
            self._beat = asyncio.get_running_loop().create_task(self._beating(), name="bus-redis-beat")
        try:
            pong(await self.run(self._r.ping()))
        except InvalidResponse:  # what answered is not Redis
            raise BusUnavailable(
                "the bus backend (Redis) did not answer PING with PONG: is bus.url a Redis?",
                reasons=["bus backend unreachable (bus.url)"],
            ) from None
        await self.subs.upgrade(int(time.time() * 1000))
        await self.subs.hold("")

    async def _beating(self) -> None:
        """This process is alive (``procs``): the agents it holds live stay held. Whatever a
        beat raises (or if it hangs past ``BEAT_S``), the next one is tried: it never stops.
        It sleeps first: ``start`` beats (a second beat at once doubled the first round trip)."""
        outage = Outage(_logger, "bus: the heartbeat to Redis works again")
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                await asyncio.wait_for(self.subs.hold(""), BEAT_S)
            except Exception as e:  # noqa: BLE001 - its agents count as not held meanwhile
                # (once per outage: a park elsewhere may remove their subscriptions)
                outage.failed("bus: the heartbeat to Redis failed (retried every %ss): %r", BEAT_S, e)
            else:
                outage.worked()

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
            with contextlib.suppress(BusError):  # (else they expire with the heartbeat)
                await self.subs.release_all()
        await self._r.aclose()

    # -- keys ------------------------------------------------------------------------------

    async def publish_keys(self, entry: PublicKeys) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(PREFIX + "keys", entry.agent, key_blob(entry))  # type: ignore[arg-type]
        if entry.name:
            pipe.hset(PREFIX + "names", entry.name, entry.agent)
        done: list[Any] = await self.run(pipe.execute())
        del done

    async def lookup_keys(self, agent: str) -> PublicKeys | None:
        blob = await self.run(self._r.hget(PREFIX + "keys", agent))
        return parse_key_blob(agent, cast(bytes, blob)) if blob is not None else None

    async def lookup_keys_many(self, agents: list[str]) -> dict[str, PublicKeys]:
        blobs: list[Any] = await self.run(self._r.hmget(PREFIX + "keys", agents))
        return {a: parse_key_blob(a, b) for a, b in zip(agents, blobs, strict=True) if b is not None}

    async def lookup_name(self, name: str) -> str | None:
        agent = await self.run(self._r.hget(PREFIX + "names", name))
        return cast(bytes, agent).decode() if agent is not None else None

    async def forget_agent(self, agent: str, inboxes: tuple[str, ...], name: str = "") -> None:
        await self._gone(agent, inboxes, name, forget=True)

    async def leave(self, agent: str, inboxes: tuple[str, ...]) -> None:
        await self._gone(agent, inboxes, "", forget=False)

    async def _gone(self, agent: str, inboxes: tuple[str, ...], name: str, *, forget: bool) -> None:
        streams = [self._inbox(i) for i in inboxes]
        keys = [PREFIX + "keys", PREFIX + "names", self.subs.exp, *OPEN_KEYS[:3], *self.subs.keys(agent)[1:]]
        keys += [self.subs.held, *streams]
        self.subs.forget(agent)
        await self.run(self._leave(keys=keys, args=[agent, name, "1" if forget else "0"]))
        self._groups.difference_update(streams)

    def footprint(self) -> dict[str, int]:
        return {"bus_consumer_groups": len(self._groups)}

    # -- inboxes ---------------------------------------------------------------------------

    def _inbox(self, inbox: str) -> str:
        return f"{PREFIX}inbox:{inbox}"

    async def _group(self, key: str) -> None:
        if key in self._groups:
            return
        try:
            await self.run(self._r.xgroup_create(key, GROUP, id="0", mkstream=True))
        except BusError as e:
            if "BUSYGROUP" not in e.message:  # it exists already: fine
                raise
        self._groups.add(key)

    async def enqueue(self, inbox: str, msg: SecureMessage, limit: int) -> None:
        key = self._inbox(inbox)
        await self._group(key)
        f = msg.to_fields()
        added = await self.run(
            self._enqueue(
                keys=[key, PREFIX + "stats"], args=[limit, f["h"], f["n"], f["c"], f["s"], msg.expires_ms]
            )
        )
        if not added:  # counted as buffer_full by the bus (Bus._deliver), as for the embedded store
            raise BusBufferFull(
                f"the inbox of {inbox} is full (runtime.message_buffer_size = {limit}); the message was not accepted"
            )

    async def fetch(self, inbox: str, max_items: int, wait_s: float) -> list[Pending]:
        try:
            return await self._fetch(inbox, max_items, wait_s)
        except _NoGroup:
            return await self._fetch(inbox, max_items, wait_s)

    async def _fetch(self, inbox: str, max_items: int, wait_s: float) -> list[Pending]:
        key = self._inbox(inbox)
        await self._group(key)
        # 1. what this consumer fetched before and did not settle (or left pending: a topic no
        # longer granted); 2. what a dead consumer left; 3. new entries: each fills what the one
        # before left, so entries left pending never keep the newer ones from being fetched
        got = await self._read(key, "0", max_items, None)
        if len(got) < max_items:
            claimed: list[Any] = await self.run(
                self._r.xautoclaim(
                    key, GROUP, self.consumer, CLAIM_IDLE_MS, "0-0", count=max_items - len(got)
                )
            )
            mine = {i for i, _ in got}  # (its own idle entries may be claimed again)
            got += [(i, f) for i, f in claimed[1] if f and i not in mine]
        if len(got) < max_items:
            block = int(wait_s * 1000) if wait_s > 0 and not got else None
            got += await self._read(key, ">", max_items - len(got), block)
        return [_pending(i, f) for i, f in got]

    async def _read(
        self, key: str, start: str, count: int, block: int | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        res = await self.run(self._r.xreadgroup(GROUP, self.consumer, {key: start}, count=count, block=block))
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        for _, entries in res or []:
            out.extend((i, f) for i, f in entries if f)
        return out

    async def settle(self, inbox: str, outcomes: list[tuple[str, Outcome]]) -> None:
        if not outcomes:
            return
        key = self._inbox(inbox)
        refs = [r for r, _ in outcomes]
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(key, GROUP, *refs)
        pipe.xdel(key, *refs)
        for o in {o for _, o in outcomes}:
            pipe.hincrby(PREFIX + "stats", o, sum(1 for _, x in outcomes if x == o))
        done: list[Any] = await self.run(pipe.execute())
        del done

    async def pending_count(self, inbox: str) -> int:
        return int(await self.run(self._r.xlen(self._inbox(inbox))))

    async def wait_arrival(
        self, inbox: str, timeout_s: float, cursor: Any
    ) -> tuple[Any, list[SecureMessage | None]]:
        key = self._inbox(inbox)
        if cursor is None:
            last = await self.run(self._r.xrevrange(key, count=1))
            cursor = last[0][0] if last else b"0-0"
        res = await self.run(self._r.xread({key: cursor}, block=max(int(timeout_s * 1000), 1)))
        out: list[SecureMessage | None] = []
        for _, entries in res or []:
            for i, f in entries:
                cursor = i
                out.append(_pending(i, f).msg)
        return cursor, out

    # -- replay window ---------------------------------------------------------------------

    async def first_seen(self, agent: str, items: list[tuple[str, int]]) -> set[str]:
        if not items:
            return set()
        pipe = self._r.pipeline(transaction=False)
        for msg_id, until_ms in items:
            pipe.set(f"{PREFIX}seen:{agent}:{msg_id}", b"1", nx=True, pxat=until_ms)
        res: list[Any] = await self.run(pipe.execute())
        return {msg_id for (msg_id, _), ok in zip(items, res, strict=True) if ok}

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(self, agent: str, pattern: str, until_ms: int) -> None:
        await self.subs.subscribe(agent, pattern, until_ms, int(time.time() * 1000), -1)

    async def unsubscribe(self, agent: str, pattern: str) -> bool:
        return await self.subs.unsubscribe(agent, pattern)

    async def unsubscribe_parked(self, agents: list[str]) -> list[str]:
        return await self.subs.unsubscribe_parked(agents)

    async def hold(self, agent: str) -> None:
        await self.subs.hold(agent)

    async def subscriptions(self) -> dict[str, set[str]]:
        return await self.subs.live(int(time.time() * 1000))

    async def subscriptions_of(self, agent: str) -> set[str]:
        return await self.subs.live_of(agent, int(time.time() * 1000))

    # -- housekeeping ----------------------------------------------------------------------

    async def expire(self, now_ms: int, retain_ms: int) -> int:
        n = 0
        async for key in self._r.scan_iter(match=f"{PREFIX}inbox:*", count=200):
            entries = await self.run(self._r.xrange(key, count=1000))
            dead = [i for i, f in entries if not f or int(f.get(b"e", b"0")) < now_ms]
            if dead:
                pipe = self._r.pipeline(transaction=True)
                pipe.xack(key, GROUP, *dead)
                pipe.xdel(key, *dead)
                done: list[Any] = await self.run(pipe.execute())
                del done
                n += len(dead)
        if n:
            await self.run(self._r.hincrby(PREFIX + "stats", "expired", n))
        if not self.subs.upgraded:  # (Redis could not be reached at start)
            try:
                await self.subs.upgrade(now_ms)
            except BusError as e:  # (the sweep goes on: the next one tries again)
                _logger.warning("bus: converting the subscriptions' layout before failed: %s", e.message)
        await self.subs.sweep(now_ms)
        return n

    async def bump(self, counter: str, n: int = 1) -> None:
        await self.run(self._r.hincrby(PREFIX + "stats", counter, n))

    async def stats(self) -> dict[str, object]:
        def read() -> dict[str, object]:
            with sync_client(self.url) as r:
                return redis_stats(r)

        return await anyio.to_thread.run_sync(read)


def key_blob(entry: PublicKeys) -> bytes:
    return b"\0".join(
        [
            entry.principal.encode(),
            entry.sign_pub.hex().encode(),
            entry.dh_pub.hex().encode(),
            entry.mac.hex().encode(),
            entry.name.encode(),
        ]
    )


def parse_key_blob(agent: str, blob: bytes) -> PublicKeys:
    try:
        principal, s, d, m, name = blob.split(b"\0")
        return PublicKeys(
            agent,
            principal.decode(),
            bytes.fromhex(s.decode()),
            bytes.fromhex(d.decode()),
            bytes.fromhex(m.decode()),
            name.decode(),
        )
    except ValueError:
        return PublicKeys(agent, "", b"", b"", b"")  # fails its HMAC: rejected, never trusted


def redis_stats(client: redis.Redis) -> dict[str, object]:
    """The counters and what waits on ``client`` (``sync_client``'s)."""
    r: Any = client  # (redis-py types its sync replies as "Awaitable[T] | T")
    counters: dict[str, int] = {name: 0 for name in COUNTERS}
    counters.update({k.decode(): int(v) for k, v in r.hgetall(PREFIX + "stats").items()})
    inboxes = {
        k.decode().removeprefix(PREFIX + "inbox:"): int(r.xlen(k))
        for k in r.scan_iter(match=f"{PREFIX}inbox:*")
    }
    return {
        "backend": "redis",
        "counters": counters,
        "pending_by_inbox": dict(sorted(inboxes.items())),
        "stored": {"pending": sum(inboxes.values())},
        "subscriptions": int(r.zcount(PREFIX + "subs:exp", f"({int(time.time() * 1000)}", "+inf")),
        "agents": int(r.hlen(PREFIX + "keys")),
    }


SCAN_PAGE = 1000  # stream entries a reply (redis_scan)


def redis_scan(client: redis.Redis) -> Iterator[StoredMessage]:
    """The stored messages on ``client`` (``sync_client``'s; the caller closes it)."""
    r: Any = client
    for key in sorted(r.scan_iter(match=f"{PREFIX}inbox:*")):
        inbox = key.decode().removeprefix(PREFIX + "inbox:")
        start = "-"
        while True:  # a page a reply: an inbox of millions is never one reply held whole
            page = [_pending(i, f) for i, f in r.xrange(key, min=start, count=SCAN_PAGE)]
            for p in page:
                yield StoredMessage(inbox, "pending", p.msg, p.error)
            if len(page) < SCAN_PAGE:
                break
            start = "(" + page[-1].ref  # the next page starts after the last id read


SYNC_CONNECT_S = 2.0  # the synchronous client's connect (symbi bus, stats)
SYNC_READ_S = 10.0  # and each of its replies: a Redis that accepts and stalls is refused


@contextlib.contextmanager
def sync_client(url: str) -> Iterator[redis.Redis]:
    """A synchronous client on ``url`` (``symbi bus``'s, ``stats``'), PINGed, closed on leaving.
    Fail closed: a connect waits ``SYNC_CONNECT_S``, each reply ``SYNC_READ_S`` (a paused or
    frozen Redis, a peer that never answers). A Redis failure in the block, the connect's, the
    PING's or a command's, is a ``BusError`` naming the URL (``safe_url``): ``BusUnavailable``
    but for a command Redis refused. Only Redis's errors: redis-py raises a socket's ``OSError``
    as its own ``ConnectionError``/``TimeoutError``, so the caller's own (a closed stdout's
    ``BrokenPipeError``) pass through as they are."""
    where = f"the bus backend (Redis at {safe_url(url)})"
    try:
        with open_sync_redis(url, SYNC_CONNECT_S, SYNC_READ_S) as r:
            pong(r.ping())
            yield r
    except RedisTimeoutError as e:
        raise BusUnavailable(
            f"{where} did not answer in time ({e}; {SYNC_CONNECT_S:g} s to connect, {SYNC_READ_S:g} s a reply)",
            reasons=["bus backend not answering (bus.url)"],
        ) from None
    except ResponseError as e:
        raise BusError(f"{where} refused a command: {e}", reasons=["bus backend error (bus.url)"]) from None
    except RedisError as e:
        raise BusUnavailable(
            f"{where} cannot be reached: {e}", reasons=["bus backend unreachable (bus.url)"]
        ) from None


def _pending(ref: bytes | str, fields: dict[Any, Any]) -> Pending:
    rid = ref.decode() if isinstance(ref, bytes) else ref
    try:
        return Pending(
            rid, SecureMessage.from_fields({k: v for k, v in fields.items() if k in (b"h", b"n", b"c", b"s")})
        )
    except ValueError as e:
        return Pending(rid, None, str(e))


class _NoGroup(BusError):
    """The consumer group is gone (Redis lost its data); made again on the next call."""
