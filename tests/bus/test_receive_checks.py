"""The receive checks' edges, in-process against both backends (embedded SQLite, a real
redis-server): the key directory's HMAC cache cannot be fooled by an entry that matches only
half of a verified one, and a delivered id is remembered for as long as a copy of it could pass
the timestamp window (else a replay after the record expired would be delivered again)."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
import time
from pathlib import Path
from typing import cast

import anyio
import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus.crypto import KeyRing, PublicKeys, config_secret
from gateway.bus.redis_backend import PREFIX
from gateway.config.load import load_config
from gateway.context import Principal
from gateway.errors import BusError
from tests.bus.test_authorization import Attributed
from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - the backends' fixture
from tests.conftest import write_config

pytestmark = pytest.mark.anyio


def test_a_cached_entry_admits_only_the_same_body_and_mac() -> None:
    ring = KeyRing(b"k" * 32, None)
    _, entry = ring.ensure("ag-a", "t")
    keys = ring.admit(entry)
    assert ring.admit(entry) is keys  # verified once, then cached
    # the same body with another MAC (forged): refused although the body is cached
    with pytest.raises(BusError):
        ring.admit(
            PublicKeys(entry.agent, entry.principal, entry.sign_pub, entry.dh_pub, b"\0" * 32, entry.name)
        )
    # other keys under the verified entry's MAC: refused, not answered with the cached keys
    _, other = KeyRing(b"k" * 32, None).ensure("ag-a", "t")
    with pytest.raises(BusError):
        ring.admit(
            PublicKeys(other.agent, other.principal, other.sign_pub, other.dh_pub, entry.mac, other.name)
        )
    # another name bound to the same keys: the HMAC covers the name
    with pytest.raises(BusError):
        ring.admit(PublicKeys(entry.agent, entry.principal, entry.sign_pub, entry.dh_pub, entry.mac, "other"))
    # a principal changed: covered too
    with pytest.raises(BusError):
        ring.admit(PublicKeys(entry.agent, "evil", entry.sign_pub, entry.dh_pub, entry.mac, entry.name))
    # an entry verified under another secret is not admitted
    with pytest.raises(BusError):
        KeyRing(b"x" * 32, None).admit(entry)


def test_a_new_principal_gets_new_keys_and_the_same_principal_keeps_them() -> None:
    ring = KeyRing(b"k" * 32, None)
    k1, e1 = ring.ensure("ag-a", "t")
    k2, e2 = ring.ensure("ag-a", "t")
    assert k2 is k1 and e2 == e1
    k3, e3 = ring.ensure("ag-a", "other")
    assert k3 is not k1 and e3.sign_pub != e1.sign_pub and e3.dh_pub != e1.dh_pub
    assert e3.principal == "other" and ring.admit(e3)[2] == "other"


async def test_a_delivered_id_is_remembered_for_the_whole_timestamp_window(env: Env) -> None:  # noqa: F811
    bus = await _pair(env, max_age_s=100.0, skew_s=7.0)
    msg = await bus.send(A, "agent-b", "x")
    assert [r.id for r in await bus.receive(B)] == [msg.id]
    # a copy passes the timestamp window until timestamp + max_age + skew: the record must last that long
    until = msg.timestamp_ms + 100_000 + 2 * 7_000
    if env.url is None:
        db = sqlite3.connect(env.data / "bus.db")
        (stored,) = db.execute(
            "SELECT until_ms FROM seen WHERE agent=? AND id=?", ("agent-b", msg.id)
        ).fetchone()
        db.close()
        assert stored == until
    else:
        r = redis.Redis.from_url(env.url)
        assert r.pexpiretime(f"{PREFIX}seen:agent-b:{msg.id}") == until
        assert r.get(f"{PREFIX}seen:agent-b:{msg.id}") is not None
    assert until > int(time.time() * 1000) + 100_000


async def test_a_sealed_body_that_is_not_json_is_rejected_not_raised(env: Env) -> None:  # noqa: F811
    """An insider with A's keys seals bytes that are not JSON: signature, recipient and window
    pass, the decrypted body does not parse; rejected like a failed decryption, and the good
    message behind it in the same batch is still delivered."""
    events = _attributed(env)
    bus = await _pair(env)
    me = bus.ring.local("agent-a")
    assert me is not None
    env.inject("agent-b", await bus.sealer.seal(me, "direct", b"\xff not json", to="agent-b"))
    good = await bus.send(A, "agent-b", "fine")
    assert [(r.id, r.body) for r in await bus.receive(B, max_items=10)] == [(good.id, "fine")]
    (rejected,) = env.events.of("bus.rejected")
    assert rejected["reason"] == "decryption failed" and rejected["inbox"] == "agent-b"
    assert rejected["sender"] == "agent-a" and rejected["recipient"] == "agent-b"
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]
    counters = (await bus.backend.stats())["counters"]
    assert isinstance(counters, dict) and (counters["delivered"], counters["rejected"]) == (1, 1)


@pytest.mark.parametrize("body", [b'"\\ud800"', b'["x",{"k":"\\uDFFF"}]'], ids=["alone", "nested"])
async def test_a_body_with_a_lone_surrogate_is_rejected_not_delivered(env: Env, body: bytes) -> None:  # noqa: F811
    """A sender bypassing ``Sealer.body`` seals a lone surrogate escape: it parsed, was settled
    as delivered, and then the receive's result could not be built (the message lost). Now
    refused as malformed; a good one behind it is delivered, and a surrogate pair still is."""
    bus = await _pair(env)
    me = bus.ring.local("agent-a")
    assert me is not None
    env.inject("agent-b", await bus.sealer.seal(me, "direct", body, to="agent-b"))
    pair = await bus.sealer.seal(me, "direct", b'"\\ud83d\\ude00"', to="agent-b")
    env.inject("agent-b", pair)
    good = await bus.send(A, "agent-b", "fine")
    got = await bus.receive(B, max_items=10)
    # was: the lone surrogate delivered (its result then failed to build)
    assert [(r.id, r.body) for r in got] == [(pair.id, "\U0001f600"), (good.id, "fine")]
    assert sum(bus.rejected.values()) == 1


def _attributed(e: Env) -> Attributed:
    e.events = Attributed()
    return e.events


async def test_an_unreadable_stored_entry_is_rejected_for_its_agent_and_settled(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env)
    good = await bus.send(A, "agent-b", "x")
    # an entry written into the inbox by something without the bus's format: not even parseable
    garbage = dataclasses.replace(good, id="garbage")
    fields = {**garbage.to_fields(), "h": b"[1, not json"}
    if env.url is None:
        db = sqlite3.connect(env.data / "bus.db")
        with db:
            db.execute(
                "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
                ("agent-b", "garbage", good.expires_ms, good.timestamp_ms, *fields.values()),
            )
        db.close()
    else:
        redis.Redis.from_url(env.url).xadd(
            f"{PREFIX}inbox:agent-b", cast("dict[FieldT, EncodableT]", {**fields, "e": str(good.expires_ms)})
        )
    assert [r.id for r in await bus.receive(B, max_items=10)] == [good.id]
    (rejected,) = events.of("bus.rejected")
    assert rejected["inbox"] == "agent-b" and isinstance(rejected["reason"], str) and rejected["reason"]
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]
    assert bus.rejected == {rejected["reason"]: 1}
    assert await bus.receive(B, max_items=10) == []  # settled: not offered again
    assert (await bus.backend.stats())["counters"]["rejected"] == 1  # type: ignore[index]


async def test_a_message_expired_in_the_inbox_is_settled_as_expired_not_delivered(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env)
    msg = await bus.send(A, "agent-b", "late", ttl_s=0.001)
    while int(time.time() * 1000) <= msg.expires_ms:
        await anyio.sleep(0.005)
    assert await bus.receive(B, max_items=10) == []  # no expiry sweep ran: the receiver saw it expired
    (expired,) = events.of("bus.expired")
    assert expired["id"] == msg.id and expired["inbox"] == "agent-b"
    assert [(p, a) for t, p, a in events.who if t == "bus.expired"] == [(None, "agent-b")]
    assert events.of("bus.rejected") == [] and bus.rejected == {}
    assert (await bus.backend.stats())["counters"]["expired"] == 1  # type: ignore[index]


async def test_an_expiry_beyond_the_max_age_is_rejected_even_when_signed_by_the_sender(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env, max_age_s=100.0, skew_s=5.0)
    me = bus.ring.local("agent-a")
    assert me is not None
    msg = await bus.sealer.seal(me, "direct", b'"x"', to="agent-b")
    # an insider with A's key makes its message live longer than bus.max_age_s allows
    longer = dataclasses.replace(msg, expires_ms=msg.timestamp_ms + 100_000 + 10_000)
    longer = dataclasses.replace(longer, signature=me.sign.sign(longer.signed_bytes()))
    env.inject("agent-b", longer)
    assert await bus.receive(B) == []
    assert [d["reason"] for d in events.of("bus.rejected")] == ["timestamp outside the window"]
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]


async def test_a_message_older_than_max_age_minus_skew_is_still_delivered_until_it_expires(env: Env) -> None:  # noqa: F811
    """The window's lower edge is max_age + skew in the past: a message sent with the full
    max_age, older than max_age - skew, is delivered while it lives."""
    bus = await _pair(env, max_age_s=2.0, skew_s=1.9)
    msg = await bus.send(A, "agent-b", "old but alive")
    while int(time.time() * 1000) < msg.timestamp_ms + 200:  # older than max_age - skew (100 ms)
        await anyio.sleep(0.01)
    assert [r.id for r in await bus.receive(B)] == [msg.id]


async def test_a_sender_that_registered_again_elsewhere_is_verified_with_its_new_keys(env: Env) -> None:  # noqa: F811
    """Two buses on one store (two gateway processes): the receiver cached A's key; A registers
    again on the other one under another principal (new keys). A's next message fails the cached
    key, the receiver looks the entry up again and delivers it. (Topic messages: their key does
    not depend on the sender's keys; a direct message would also need the receiver's cached pair
    key dropped, which KeyRing does not do yet.)"""
    receiver = await _pair(env)
    await receiver.subscribe(B, "news")
    sender = await env.bus()
    await sender.publish(A, "news", "first")
    assert [r.body for r in await receiver.receive(B)] == ["first"]
    moved = Principal(id="moved", agent="agent-a")
    await sender.register("agent-a", "moved")
    await sender.publish(moved, "news", "second")
    assert [r.body for r in await receiver.receive(B)] == ["second"]
    assert receiver.rejected == {}


async def test_rejections_are_audited_for_the_receiving_agent_and_its_inbox(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env, max_age_s=100.0)
    c, a = bus.ring.local("agent-c"), bus.ring.local("agent-a")
    assert c is not None and a is not None
    forged = await bus.sealer.seal(c, "direct", b'"x"', to="agent-b")
    env.inject("agent-b", dataclasses.replace(forged, sender="agent-a"))  # C's signature, A's name
    env.inject("agent-b", await bus.sealer.seal(a, "direct", b'"x"', to="agent-c"))  # C's, moved
    future = await bus.sealer.seal(a, "direct", b'"x"', to="agent-b")
    future = dataclasses.replace(future, timestamp_ms=future.timestamp_ms + 3_600_000)
    env.inject("agent-b", dataclasses.replace(future, signature=a.sign.sign(future.signed_bytes())))
    assert await bus.receive(B, max_items=10) == []
    rejected = events.of("bus.rejected")
    assert [(d["reason"], d["inbox"]) for d in rejected] == [
        ("bad signature", "agent-b"),
        ("wrong recipient", "agent-b"),
        ("timestamp outside the window", "agent-b"),
    ]
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")] * 3


async def test_a_message_for_an_agent_whose_keys_went_while_it_waited_is_rejected(env: Env) -> None:  # noqa: F811
    """The agent ended (its private keys forgotten) while its receive waited: a message that
    arrives then passes the checks before decryption but cannot be opened; rejected, not raised."""
    events = _attributed(env)
    bus = await _pair(env)
    a = bus.ring.local("agent-a")
    assert a is not None
    msg = await bus.sealer.seal(a, "direct", b'"x"', to="agent-b")
    got: list[object] = []

    async def waiting() -> None:
        got.extend(await bus.receive(B, max_items=10, wait_s=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiting)
        await anyio.sleep(0.1)  # the receive is waiting (its agent's keys were checked before)
        bus.ring.forget("agent-b")
        env.inject("agent-b", msg)
        with anyio.fail_after(10):
            while not events.of("bus.rejected"):
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert got == []
    (rejected,) = events.of("bus.rejected")
    assert (rejected["reason"], rejected["inbox"], rejected["id"]) == (
        "no key for this agent",
        "agent-b",
        msg.id,
    )
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]


def test_a_configured_bus_secret_is_the_one_entries_are_authenticated_with(tmp_path: Path) -> None:
    """[bus] secret (SYMBI_BUS_SECRET: the gateways of one Redis bus share it) replaces the data
    dir's own bus-secret file: an entry made by one gateway is admitted by another."""
    secret = bytes(range(32))
    cfg = load_config(write_config(tmp_path, f'[bus]\nsecret = "{base64.b64encode(secret).decode()}"\n'))
    assert config_secret(cfg) == secret and not cfg.bus_secret_path.exists()
    _, entry = KeyRing(secret, None).ensure("ag-a", "t")
    assert KeyRing(config_secret(cfg), None).admit(entry)[2] == "t"
    # unset: the data dir's own secret, made on first use
    (tmp_path / "own").mkdir()
    own = load_config(write_config(tmp_path / "own", ""))
    mine = config_secret(own)
    assert len(mine) == 32 and mine != secret and config_secret(own) == mine


async def test_one_batch_with_replays_and_an_unsubscribed_topic_settles_every_entry(env: Env) -> None:  # noqa: F811
    """One receive takes: a replay of a delivered message, the same new message twice, a
    topic message after its subscription ended, and a good message last. Each replay and the
    unsubscribed topic message is rejected, the new one and the good one delivered once."""
    events = _attributed(env)
    bus = await _pair(env)
    a = bus.ring.local("agent-a")
    assert a is not None
    old = await bus.send(A, "agent-b", "old")
    ((_, copy),) = env.stored("agent-b")  # the stored copy (Redis removes it once settled)
    assert [r.id for r in await bus.receive(B)] == [old.id]
    await bus.subscribe(B, "news")
    await bus.publish(A, "news", "topic")
    await bus.unsubscribe(B, "news")
    twice = await bus.sealer.seal(a, "direct", b'"twice"', to="agent-b")
    env.inject("agent-b", copy)
    env.inject("agent-b", twice)
    env.inject("agent-b", twice)
    last = await bus.send(A, "agent-b", "last")
    got = await bus.receive(B, max_items=20)
    assert [(r.id, r.body) for r in got] == [(twice.id, "twice"), (last.id, "last")]
    assert sorted(d["reason"] for d in events.of("bus.rejected")) == [
        "not subscribed to this topic",
        "replayed id",
        "replayed id",
    ]
    assert await bus.receive(B, max_items=20) == []  # every entry settled
    counters = (await bus.backend.stats())["counters"]
    assert isinstance(counters, dict) and (counters["delivered"], counters["rejected"]) == (3, 3)


def test_a_registered_agent_keeps_its_private_keys_across_a_restart(tmp_path: Path) -> None:
    """ensure() stores the keys in bus-keys.db by default (a stable agent's mail stays readable
    after a restart); persist=False (an id that never comes back) keeps them in memory only."""
    ring = KeyRing(b"k" * 32, tmp_path / "bus-keys.db")
    keys, entry = ring.ensure("ag-a", "t")
    ring.ensure("ag-session", "t", persist=False)
    ring.close()
    again = KeyRing(b"k" * 32, tmp_path / "bus-keys.db")
    kept = again.local("ag-a")
    assert kept is not None and kept.principal == "t"
    assert again.entry_for(kept) == entry  # the same public keys, so the same directory entry
    assert again.local("ag-session") is None
    again.close()
