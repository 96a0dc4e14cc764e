"""What the bus keeps for an agent whose id recurs (a stateless client's: principal, client
name, credential) goes once it has ended for longer than ``bus.max_age_s``.

Red team: one API key on the stateless protocol made one agent per declared client name, each
idled out by the runtime's sweep, and the private keys, directory entry and name of every one
stayed in the data dir for good (``runtime.max_agents_per_principal`` only caps live agents).

Real parts: the gateway as ``make_gateway`` assembles it (runtime registry and its sweep,
embedded bus store and key store in the data dir, or a real redis-server), agents made the way
the HTTP front makes a stateless client's (``for_session`` with a ``key:<id>`` session key).
"""

from __future__ import annotations

import dataclasses
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
from gateway.config.load import load_config
from gateway.context import Principal
from gateway.errors import BusNoAgent
from tests.bus.conftest import RedisServer
from tests.bus.test_agent_keys_lifecycle import call, send_raw
from tests.conftest import write_config

pytestmark = pytest.mark.anyio

MALLORY = Principal(id="mallory", roles=("tester",), source="key", claims={"key_id": "k1"})
AGENTS = 200
# agents idle out at once and are swept often; what the bus keeps for an ended one goes after
# bus.max_age_s, looked at by the expiry sweep
FAST = "[runtime]\nagent_idle_timeout_s = 0.05\ngc_interval_ms = 10\n"


def _gateway(tmp_path: Path, body: str) -> Gateway:
    return make_gateway(load_config(write_config(tmp_path, f"[sandbox]\ncode_tools = false\n{body}")))


def _bus(gw: Gateway) -> Bus:
    builtin = gw.builtins["bus"]
    assert isinstance(builtin, BusBuiltin)
    return builtin.bus


def _count(path: Path, table: str) -> int:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def _stored_keys(gw: Gateway) -> int:
    """Private key rows in the data dir's key store (bus-keys.db)."""
    return _count(gw.config.bus_keys_path, "agent_keys")


def _as(gw: Gateway, who: Principal, client: str, session: str) -> Principal:
    return dataclasses.replace(who, agent=gw.agents.for_session(who, client, session).id)


async def _mint(gw: Gateway, n: int) -> list[str]:
    """One stateless agent per declared client name, each idled out and swept."""
    made = []
    for i in range(n):
        me = _as(gw, MALLORY, f"m{i}", "key:k1")  # the session key of a stateless API key client
        assert me.agent is not None
        made.append(me.agent)
        await anyio.lowlevel.checkpoint()  # its directory entry is published on the loop
        gw.runtime.sweep(now=time.monotonic() + 1)  # idle: ended
        gw.runtime.sweep()  # removed from the registry
    return made


async def _until(check: Any, timeout_s: float = 20) -> None:
    with anyio.move_on_after(timeout_s):
        while not check():
            await anyio.sleep(0.05)


async def test_stateless_agents_that_idled_out_leave_their_keys_after_the_retention(tmp_path: Path) -> None:
    gw = _gateway(tmp_path, f"{FAST}[bus]\nmax_age_s = 1\nexpire_interval_s = 0.1\n")
    bus = _bus(gw)
    async with gw.running():
        start = _stored_keys(gw), _count(gw.config.bus_path, "keys"), bus.footprint()
        made = await _mint(gw, AGENTS)
        assert len(set(made)) == AGENTS and len(gw.agents) == 0
        # (kept while one of them may come back within a message's lifetime) ...
        # ... then gone: the store holds the live agents (none) and nothing of the ended ones
        # the private keys go at the expiry sweep, the directory entries by a task each after it
        await _until(lambda: (_stored_keys(gw), _count(gw.config.bus_path, "keys")) == start[:2])
        assert _stored_keys(gw) == start[0]
        assert _count(gw.config.bus_path, "keys") == start[1]
        await _until(lambda: bus.footprint() == start[2])
        assert bus.footprint() == start[2]
        # a second wave: nothing kept grows with the number of agents ever made
        await _mint(gw, AGENTS // 2)
        await _until(lambda: (_stored_keys(gw), _count(gw.config.bus_path, "keys")) == start[:2])
        assert (_stored_keys(gw), _count(gw.config.bus_path, "keys")) == start[:2]


async def _idle_out(gw: Gateway, who: Principal) -> int:
    """``who``'s agent goes idle and is swept (ended, then removed); a time (ms) by which it
    had ended, a little before the next message is sent."""
    agent = gw.agents.get(who.agent)
    assert agent is not None
    gw.runtime.sweep(now=agent.last_seen + gw.config.runtime.agent_idle_timeout_s + 1)
    gw.runtime.sweep()
    assert gw.agents.get(who.agent) is None
    ended_by = int(time.time() * 1000)
    await anyio.sleep(0.01)
    return ended_by


async def _expire_at(bus: Bus, now_ms: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bus's expiry sweep as if it ran at ``now_ms``."""
    monkeypatch.setattr("gateway.bus.core.time.time", lambda: now_ms / 1000)
    try:
        await bus.expire()
    finally:
        monkeypatch.undo()


async def _away(gw: Gateway, bus: Bus) -> tuple[Principal, Principal, Any, int]:
    """A stateless client's agent that was on the bus idles out; another agent (its own
    session) is there to write to it. (reader, writer, reader's directory entry, ended by)."""
    reader = _as(gw, MALLORY, "reader", "key:k1")
    await call(gw, reader, "receive")
    assert reader.agent is not None
    entry = await bus.backend.lookup_keys(reader.agent)
    ended_by = await _idle_out(gw, reader)
    return reader, _as(gw, MALLORY, "writer", "http:w"), entry, ended_by


async def test_an_agent_back_within_the_retention_keeps_its_keys_and_reads_its_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = _gateway(tmp_path, "[bus]\nmax_age_s = 60\n")
    bus = _bus(gw)
    async with gw.running():
        reader, writer, entry, ended_by = await _away(gw, bus)
        assert reader.agent is not None
        sent = await call(gw, writer, "send", to=reader.agent, body="while away")
        # a message to it lives no longer than its keys are kept: readable all its life
        assert sent["expires_ms"] <= ended_by + 60_000
        # the expiry sweep just before the retention is over keeps everything
        await _expire_at(bus, ended_by + 59_000, monkeypatch)
        again = _as(gw, MALLORY, "reader", "key:k1")
        assert again.agent == reader.agent
        assert await bus.backend.lookup_keys(reader.agent) == entry  # the same keys
        got = (await call(gw, again, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "while away")]
        # back, it is no longer on its way out: a sweep long after keeps it
        await _expire_at(bus, ended_by + 600_000, monkeypatch)
        assert await bus.backend.lookup_keys(reader.agent) == entry
        assert _stored_keys(gw) == 1


async def test_an_agent_back_after_its_keys_went_gets_new_keys_and_none_of_the_old_mail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = _gateway(tmp_path, "[bus]\nmax_age_s = 60\n")
    bus = _bus(gw)
    async with gw.running():
        reader, writer, old, ended_by = await _away(gw, bus)
        assert reader.agent is not None
        await call(gw, writer, "send", to=reader.agent, body="meant for the old keys")
        # bus.max_age_s after it ended its keys, entry and inbox go; a message to it is refused
        await _expire_at(bus, ended_by + 60_000, monkeypatch)
        assert _stored_keys(gw) == 0
        assert await bus.backend.lookup_keys(reader.agent) is None
        with pytest.raises(BusNoAgent):
            await send_raw(gw, writer, reader.agent, "too late")
        # back (the same credential and client name: the same id), it gets new keys and finds
        # nothing sent to the old ones
        again = _as(gw, MALLORY, "reader", "key:k1")
        assert again.agent == reader.agent
        assert (await call(gw, again, "receive"))["messages"] == []
        new = await bus.backend.lookup_keys(reader.agent)
        assert new is not None and old is not None and new.dh_pub != old.dh_pub
        # and what is sent to it now reaches it
        sent = await call(gw, writer, "send", to=again.agent, body="hello again")
        got = (await call(gw, again, "receive"))["messages"]
        assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "hello again")]


async def test_redis_directory_forgets_stateless_agents_after_the_retention(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    import redis

    gw = _gateway(
        tmp_path,
        f'{FAST}[bus]\nmax_age_s = 1\nexpire_interval_s = 0.1\nbackend = "redis"\nurl = "{redis_server.url}"\n',
    )
    r = redis.Redis.from_url(redis_server.url)

    def stored() -> tuple[object, ...]:
        return r.hlen("symbi:bus:keys"), r.hlen("symbi:bus:names"), _stored_keys(gw)

    async with gw.running():
        start = stored()
        await _mint(gw, AGENTS // 4)
        await _until(lambda: stored() == start)
        assert stored() == start


async def test_agents_a_stopped_run_left_go_after_the_retention_in_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that stops (or crashes) with stateless agents live never ends them: the next run
    counts them as ended at its start; one that comes back keeps its keys."""
    body = "[bus]\nmax_age_s = 60\n"
    gw = _gateway(tmp_path, body)
    async with gw.running():
        await _mint(gw, 3)  # ended before the stop
        live = [_as(gw, MALLORY, f"live{i}", "key:k1") for i in range(2)]  # live at the stop
        await call(gw, live[0], "receive")
        await call(gw, live[1], "receive")
        assert _stored_keys(gw) == 5
    gw = _gateway(tmp_path, body)
    async with gw.running():
        back = _as(gw, MALLORY, "live0", "key:k1")
        assert back.agent == live[0].agent
        await anyio.lowlevel.checkpoint()
        later = time.time() + 61
        monkeypatch.setattr("gateway.bus.core.time.time", lambda: later)
        await _bus(gw).expire()
        assert _stored_keys(gw) == 1  # only the one that came back
        assert _count(gw.config.bus_path, "keys") == 1


@pytest.mark.parametrize("backend", ["embedded", "redis"])
async def test_an_ended_session_agent_receives_no_more_publications(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Attack (session 40): an HTTP session's agent that subscribed to a topic and sent one
    message kept its subscription after its session ended, until that message expired
    (``bus.max_age_s``, a day by default): every publication sealed and stored a copy for it
    that nobody can read. Ended agents do not count against ``max_agents_per_principal``, so
    one principal piled up such subscribers (open a session, subscribe, send, close), and each
    publication on the topic, anyone's, sealed one more copy per subscriber on the event loop.
    Now an ended agent's subscriptions and inboxes go when it ends; its entry stays for what
    it sent."""
    bus_cfg = "[bus]\nexpire_interval_s = 0.1\n"
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        bus_cfg += f'backend = "redis"\nurl = "{server.url}"\n'
    gw = _gateway(tmp_path, bus_cfg)
    async with gw.running():
        publisher = _as(gw, MALLORY, "publisher", "key:k1")
        await call(gw, publisher, "receive")
        for i in range(5):
            me = _as(gw, MALLORY, "churn", f"http:s{i}")  # an HTTP session id never comes back
            await call(gw, me, "subscribe", topic="team.news")
            await call(gw, me, "send", to=publisher.agent, body="still alive")  # keeps its entry
            await anyio.lowlevel.checkpoint()
            gw.runtime.close_session(f"http:s{i}", "shutdown: the client closed its session")
            gw.runtime.sweep()
        with anyio.fail_after(5):
            while (await _bus(gw).backend.subscriptions()) != {}:
                await anyio.sleep(0.05)
        published = await call(gw, publisher, "publish", topic="team.news", body="hello")
        assert published["delivered_to"] == 0
        got = await call(gw, publisher, "receive", max=10)
        assert [m["body"] for m in got["messages"]] == ["still alive"] * 5  # verified: entries kept
