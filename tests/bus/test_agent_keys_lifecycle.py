"""A session agent's bus keys go when the agent ends; a stable id's keys stay (bounded by the
credentials, not by the sessions).

Real parts: the gateway as ``make_gateway`` assembles it (runtime registry, embedded bus store
and key store in the data dir, policy off), session agents made and ended the way the HTTP
front does (``for_session`` with an ``http:<sid>`` key, ``close_session`` on DELETE, the
runtime's sweep); the bus tools called through the chain. The Redis variant runs a real
redis-server.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.bus.builtin import BusBuiltin
from gateway.bus.core import Bus
from gateway.bus.crypto import TOPIC_KEYS_CAP, KeyRing
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.errors import BusNoAgent
from tests.bus.conftest import RedisServer
from tests.conftest import write_config

pytestmark = pytest.mark.anyio

TESTER = Principal(id="tester", roles=("tester",))
SESSIONS = 200


def _gateway(tmp_path: Path, bus: str = "") -> Gateway:
    return make_gateway(load_config(write_config(tmp_path, f"[sandbox]\ncode_tools = false\n{bus}")))


def _bus(gw: Gateway) -> Bus:
    builtin = gw.builtins["bus"]
    assert isinstance(builtin, BusBuiltin)
    return builtin.bus


def _rows(gw: Gateway) -> tuple[int, int]:
    """(private key rows in bus-keys.db, key directory rows in bus.db)."""
    counts = []
    for path, table in ((gw.config.bus_keys_path, "agent_keys"), (gw.config.bus_path, "keys")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            counts.append(int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))
        finally:
            db.close()
    return counts[0], counts[1]


async def call(gw: Gateway, who: Principal, tool: str, **args: Any) -> Any:
    result = await gw.call(
        CallContext(principal=who, kind="tools/call", target=f"bus__{tool}", arguments=args)
    )
    assert not result.is_error, result
    return result.structured_content


async def send_raw(gw: Gateway, who: Principal, to: str | None, body: Any) -> Any:
    """bus__send through the chain, its errors raised (not turned into a result)."""
    return await gw.call(
        CallContext(principal=who, kind="tools/call", target="bus__send", arguments={"to": to, "body": body})
    )


def _as(gw: Gateway, client: str, session: str) -> Principal:
    return dataclasses.replace(TESTER, agent=gw.agents.for_session(TESTER, client, session).id)


async def _churn(gw: Gateway, reader: Principal, n: int, batch: int = 0) -> list[str]:
    """``n`` HTTP sessions, each with an agent that uses the bus, opened and closed."""
    ended = []
    for i in range(n):
        me = _as(gw, "churn", f"http:s{batch}-{i}")  # an HTTP session id never comes back
        if i % 20 == 0:  # some of them use the bus (keys, pair keys, chains), some only exist
            await call(gw, me, "send", to=reader.agent, body=i, ttl_s=0.5)
            await call(gw, reader, "send", to=me.agent, body="left unread")  # an inbox left behind
            await call(gw, me, "subscribe", topic="team.*")
            await call(gw, me, "receive")
        await anyio.lowlevel.checkpoint()  # the directory entry is published on the loop
        gw.runtime.close_session(f"http:s{batch}-{i}", "shutdown: the client closed its session")
        gw.runtime.sweep()
        assert me.agent is not None
        ended.append(me.agent)
    return ended


async def _settled(bus: Bus, gw: Gateway, start: tuple[dict[str, int], tuple[int, int]]) -> None:
    """Until the state is back at ``start`` (what ended agents sent expires in 0.5 s), or 20 s."""
    with anyio.move_on_after(20):
        while (bus.footprint(), _rows(gw)) != start:
            await anyio.sleep(0.1)
    assert bus.footprint() == start[0]
    assert _rows(gw) == start[1]


BUS = "[bus]\nexpire_interval_s = 0.1\n"


async def test_session_agents_leave_no_bus_keys_behind(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, BUS)
    bus = _bus(gw)
    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")  # a stateless client: a stable id
        await call(gw, reader, "send", to=reader.agent, body="warm-up")  # its chain, its sent expiry
        await call(gw, reader, "receive")
        start = bus.footprint(), _rows(gw)
        one = _as(gw, "churn", "http:grown")
        await anyio.lowlevel.checkpoint()
        assert (bus.footprint(), _rows(gw)) != start  # the counts see a session agent
        gw.runtime.close_session("http:grown", "shutdown: the client closed its session")
        ended = await _churn(gw, reader, SESSIONS // 2)
        assert len(gw.agents) == 1
        # a second round: nothing retained grows with the number of sessions
        ended += await _churn(gw, reader, SESSIONS // 2, batch=1)
        await _settled(bus, gw, start)
        # a message to an ended agent is refused (the bus's error), not accepted into a void
        for agent in (one.agent, ended[0], ended[1]):
            with pytest.raises(BusNoAgent):
                await send_raw(gw, reader, agent, "too late")


async def test_what_an_ended_agent_sent_still_verifies(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, BUS)
    bus = _bus(gw)
    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")
        await call(gw, reader, "send", to=reader.agent, body="warm-up")  # its entry verified, cached
        await call(gw, reader, "receive")
        start = bus.footprint(), _rows(gw)
        gone = _as(gw, "churn", "http:gone")
        sent = await call(gw, gone, "send", to=reader.agent, body="before I go", ttl_s=1)
        gw.runtime.close_session("http:gone", "shutdown: the client closed its session")
        with pytest.raises(BusNoAgent):  # refused at once ...
            await gw.call(
                CallContext(
                    principal=reader,
                    kind="tools/call",
                    target="bus__send",
                    arguments={"to": gone.agent, "body": 1},
                )
            )
        # ... but its public keys stay until what it sent expired: its message still verifies
        got = (await call(gw, reader, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "before I go")]
        assert bus.footprint()["bus_ended_kept"] == 1
        await _settled(bus, gw, start)


async def test_a_stable_agent_keeps_its_keys_and_its_mail_across_its_sessions(tmp_path: Path) -> None:
    gw = _gateway(tmp_path)
    async with gw.running():
        writer = _as(gw, "writer", "http:w")
        reader = _as(gw, "reader", "key:k-reader")
        await call(gw, reader, "receive")
        # the stateless agent goes idle and is swept (ended, then removed) ...
        agent = gw.agents.get(reader.agent)
        assert agent is not None
        gw.runtime.sweep(now=agent.last_seen + gw.config.runtime.agent_idle_timeout_s + 1)
        gw.runtime.sweep()
        assert gw.agents.get(reader.agent) is None
        # ... its id still takes mail (its keys outlive its session: they are its credential's)
        sent = await call(gw, writer, "send", to=reader.agent, body="while away")
        again = _as(gw, "reader", "key:k-reader")
        assert again.agent == reader.agent
        got = (await call(gw, again, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "while away")]
        # and it can still answer
        await call(gw, again, "send", to=writer.agent, body="back")
        assert [m["body"] for m in (await call(gw, writer, "receive"))["messages"]] == ["back"]


async def test_redis_directory_forgets_ended_session_agents(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    import redis

    gw = _gateway(tmp_path, f'{BUS}backend = "redis"\nurl = "{redis_server.url}"\n')
    bus = _bus(gw)
    r = redis.Redis.from_url(redis_server.url)

    def stored() -> tuple[object, ...]:
        hashes = (r.hlen("symbi:bus:keys"), r.hlen("symbi:bus:names"), r.hlen("symbi:bus:subs"))
        return (*hashes, set(r.scan_iter(match="symbi:bus:inbox:*")))

    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")
        await call(gw, reader, "send", to=reader.agent, body="warm-up")
        await call(gw, reader, "receive")
        before, start = stored(), bus.footprint()
        ended = await _churn(gw, reader, 40)
        assert stored() != before  # the entries of agents whose messages are alive are kept
        with anyio.move_on_after(20):  # ... until those expired (0.5 s)
            while stored() != before or bus.footprint() != start:
                await anyio.sleep(0.1)
        assert stored() == before
        assert bus.footprint() == start
        with pytest.raises(BusNoAgent):
            await send_raw(gw, reader, ended[0], 1)


async def test_session_agents_left_by_a_stop_without_ending_them_are_cleaned_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that stops (or crashes) with HTTP sessions open never ends their agents: the
    next run refuses messages to them at once, still delivers what they sent before the stop
    (verified with their directory entry), and removes their entries, subscriptions and inboxes
    once everything they may have sent expired (bus.max_age_s)."""
    gw = _gateway(tmp_path, BUS)
    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")
        await call(gw, reader, "send", to=reader.agent, body="warm-up")
        await call(gw, reader, "receive")
        start = _rows(gw)
        left = _as(gw, "churn", "http:open-at-the-stop")
        await call(gw, left, "subscribe", topic="team.*")
        await call(gw, reader, "send", to=left.agent, body="never read")
        await call(gw, left, "send", to=reader.agent, body="sent before the stop", ttl_s=60)
        assert _rows(gw) != start  # its directory entry
    # the next run, on the same data dir
    gw = _gateway(tmp_path, BUS)
    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")
        with pytest.raises(BusNoAgent):
            await send_raw(gw, reader, left.agent, "too late")
        got = (await call(gw, reader, "receive"))["messages"]
        assert [m["body"] for m in got] == ["sent before the stop"]
        # a day later (bus.max_age_s) the expiry sweep removes what the bus held for it
        later = time.time() + gw.config.bus.max_age_s + 1
        monkeypatch.setattr("gateway.bus.core.time.time", lambda: later)
        await _bus(gw).expire()
        assert _rows(gw) == start
        db = sqlite3.connect(f"file:{gw.config.bus_path}?mode=ro", uri=True)
        try:
            assert db.execute("SELECT count(*) FROM subs").fetchone()[0] == 0
            waiting = db.execute("SELECT count(*) FROM messages WHERE state=0 AND inbox=?", (left.agent,))
            assert waiting.fetchone()[0] == 0
        finally:
            db.close()
        assert _bus(gw).footprint()["bus_ephemeral_marks"] == 0


class _Connection:
    """Stand-in for the SDK's client connection the bus holds weakly for resources/subscribe
    (the HTTP test in test_http_bus.py uses the real one); notifications are recorded."""

    def __init__(self) -> None:
        self.outbound = self
        self.sent: list[dict[str, Any]] = []

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        self.sent.append(params)


async def test_watches_are_counted_and_go_with_their_connection(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, BUS)
    builtin = gw.builtins["bus"]
    assert isinstance(builtin, BusBuiltin)
    async with gw.running():
        reader = _as(gw, "reader", "key:k-reader")
        await call(gw, reader, "receive")
        start = builtin.footprint()
        me = _as(gw, "churn", "http:watching")
        conn: _Connection | None = _Connection()
        await builtin.watch("bus://inbox", me, conn, True)
        await builtin.watch("bus://topics/team.*", me, conn, True)
        grown = builtin.footprint()
        assert (grown["bus_watched_agents"], grown["bus_watched_uris"]) == (1, 2)
        await builtin.watch("bus://topics/team.*", me, conn, False)
        assert builtin.footprint()["bus_watched_uris"] == 1
        conn = None  # the session's connection goes (the SDK drops it when the session closes)
        gc.collect()
        gw.runtime.close_session("http:watching", "shutdown: the client closed its session")
        gw.runtime.sweep()
        with anyio.move_on_after(20):  # the watcher notices at its next wait (up to 5 s)
            while builtin.footprint() != start:
                await anyio.sleep(0.1)
        assert builtin.footprint() == start


def test_derived_topic_keys_are_a_bounded_cache() -> None:
    ring = KeyRing(os.urandom(32), None)
    for i in range(TOPIC_KEYS_CAP + 10):  # topic names are the agents' choice
        ring.topic_cipher(f"t.{i}")
    assert ring.topic_keys == TOPIC_KEYS_CAP
    # an evicted topic's key is derived again, the same
    nonce = bytes(12)
    sealed = ring.topic_cipher("t.0").encrypt(nonce, b"x", b"")
    assert KeyRing(ring.secret, None).topic_cipher("t.0").decrypt(nonce, sealed, b"") == b"x"
