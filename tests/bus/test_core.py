"""The bus core against both backends (embedded SQLite and a real redis-server): delivery,
ordering, de-duplication, request/response, pub/sub, buffers, expiry, and the attacks
(tampered ciphertext, forged signature, replay, wrong recipient) written straight into the
store or into Redis."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import redis
from redis.typing import EncodableT, FieldT

from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend
from gateway.bus.message import SecureMessage
from gateway.bus.redis_backend import PREFIX, RedisBackend
from gateway.context import Decision, Principal
from gateway.errors import ArgumentsInvalid, BusBufferFull, BusNoAgent, BusTimeout, PolicyDenied
from gateway.events import Event

pytestmark = pytest.mark.anyio


@dataclass
class Recorder:
    """An event sink that keeps what it is given (the audit log's stand-in at this level)."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        assert isinstance(event_type, Event) and event_type.startswith("bus."), (
            event_type
        )  # the one catalogue
        self.events.append((event_type, dict(details)))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == kind]


@dataclass
class Env:
    kind: str
    data: Path
    url: str | None
    events: Recorder
    buses: list[Bus] = field(default_factory=list)

    async def bus(self, *, buffer_size: int = 100, authorize: Any = None, **kw: Any) -> Bus:
        backend: Any = EmbeddedBackend(self.data / "bus.db") if self.url is None else RedisBackend(self.url)
        await backend.start()
        ring = KeyRing(load_secret(self.data / "bus-secret"), self.data / "bus-keys.db")
        b = Bus(backend, ring, events=self.events, buffer_size=buffer_size, authorize=authorize, **kw)
        self.buses.append(b)
        return b

    async def close(self) -> None:
        for b in self.buses:
            await b.stop_tasks()
            await b.backend.close()
            b.ring.close()
        self.buses.clear()

    # attacks: raw access to where messages are stored
    def stored(self, inbox: str) -> list[tuple[str, SecureMessage]]:
        if self.url is None:
            db = sqlite3.connect(self.data / "bus.db")
            rows = db.execute(
                "SELECT seq, h, n, c, s FROM messages WHERE inbox=? ORDER BY seq", (inbox,)
            ).fetchall()
            db.close()
            return [
                (str(r[0]), SecureMessage.from_fields({"h": r[1], "n": r[2], "c": r[3], "s": r[4]}))
                for r in rows
            ]
        r = redis.Redis.from_url(self.url)
        return [
            (i.decode(), SecureMessage.from_fields({k: v for k, v in f.items() if k != b"e"}))
            for i, f in cast(list[tuple[bytes, dict[bytes, bytes]]], r.xrange(f"{PREFIX}inbox:{inbox}"))
        ]

    def inject(self, inbox: str, msg: SecureMessage) -> None:
        f = msg.to_fields()
        if self.url is None:
            db = sqlite3.connect(self.data / "bus.db")
            with db:
                db.execute(
                    "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
                    (inbox, msg.id, msg.expires_ms, msg.timestamp_ms, f["h"], f["n"], f["c"], f["s"]),
                )
            db.close()
        else:
            r = redis.Redis.from_url(self.url)
            r.xadd(
                f"{PREFIX}inbox:{inbox}", cast("dict[FieldT, EncodableT]", {**f, "e": str(msg.expires_ms)})
            )


@pytest.fixture(params=["embedded", "redis"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
    e = Env(request.param, tmp_path / "data", url, Recorder())
    try:
        yield e
    finally:
        await e.close()


A = Principal(id="team", agent="agent-a", source="key")
B = Principal(id="team", agent="agent-b", source="key")
C = Principal(id="other", agent="agent-c", source="key")


async def _pair(env: Env, **kw: Any) -> Bus:
    bus = await env.bus(**kw)
    for p in (A, B, C):
        assert p.agent is not None
        await bus.register(p.agent, p.qualified)
    return bus


async def test_direct_in_order_exactly_once(env: Env) -> None:
    bus = await _pair(env)
    ids = [(await bus.send(A, "agent-b", {"n": i})).id for i in range(20)]
    got = await bus.receive(B, max_items=100)
    assert [r.body for r in got] == [{"n": i} for i in range(20)]
    assert [r.id for r in got] == ids and all(r.sender == "agent-a" for r in got)
    assert await bus.receive(B, max_items=100) == []  # settled: not delivered twice


async def test_store_and_backend_hold_only_ciphertext(env: Env) -> None:
    bus = await _pair(env)
    await bus.send(A, "agent-b", "the-secret-body-text")
    ((_, msg),) = env.stored("agent-b")
    assert b"the-secret-body-text" not in msg.ciphertext + msg.header()
    if env.url is None:
        assert b"the-secret-body-text" not in (env.data / "bus.db").read_bytes()
        assert (env.data / "bus.db").stat().st_mode & 0o777 == 0o600


async def test_no_agent_and_unknown_recipient_are_refused(env: Env) -> None:
    bus = await _pair(env)
    with pytest.raises(BusNoAgent):
        await bus.send(Principal(id="team"), "agent-b", "x")
    with pytest.raises(BusNoAgent):
        await bus.send(A, "nobody", "x")


async def test_receive_waits_for_arrival(env: Env) -> None:
    bus = await _pair(env)
    async with anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(0.2)
            await bus.send(A, "agent-b", "late")

        tg.start_soon(later)
        got = await bus.receive(B, wait_s=5)
    assert [r.body for r in got] == ["late"]


async def test_request_reply_and_timeout(env: Env) -> None:
    bus = await _pair(env)

    async def responder() -> None:
        (req,) = await bus.receive(B, wait_s=5)
        assert req.kind == "request"
        await bus.reply(B, req.id, {"echo": req.body})

    async with anyio.create_task_group() as tg:
        tg.start_soon(responder)
        answer = await bus.request(A, "agent-b", "ping", timeout_s=5)
    assert answer.body == {"echo": "ping"} and answer.sender == "agent-b"
    start = time.monotonic()
    with pytest.raises(BusTimeout):
        await bus.request(A, "agent-b", "nobody answers", timeout_s=0.5)
    assert time.monotonic() - start >= 0.5
    assert env.events.of("bus.request_timeout")
    # the unanswered request expired with its timeout: never delivered late, counted
    await anyio.sleep(0.05)
    assert await bus.receive(B) == []
    assert env.events.of("bus.expired")


async def test_pubsub_with_patterns_and_validation(env: Env) -> None:
    bus = await _pair(env)
    await bus.subscribe(B, "alerts.*")
    await bus.subscribe(C, "alerts.disk")
    res = await bus.publish(A, "alerts.disk", {"level": 3})
    assert res.delivered_to == 2 and res.refused == ()
    assert [r.body for r in await bus.receive(B)] == [{"level": 3}]
    assert [r.topic for r in await bus.receive(C)] == ["alerts.disk"]
    await bus.publish(A, "alerts.cpu.core0", 1)  # '*' stays within one part
    assert await bus.receive(B) == []
    assert await bus.unsubscribe(B, "alerts.*")
    await bus.publish(A, "alerts.net", 2)
    assert await bus.receive(B) == []
    for bad in ("alerts.*", "", "a" * 129, "spaces here", "a/b"):
        with pytest.raises(ArgumentsInvalid):
            await bus.publish(A, bad, 1)
    with pytest.raises(ArgumentsInvalid):
        await bus.subscribe(B, "alerts.**")


async def test_buffer_overflow_errors_sender_and_keeps_accepted(env: Env) -> None:
    bus = await _pair(env, buffer_size=5)
    for i in range(5):
        await bus.send(A, "agent-b", i)
    with pytest.raises(BusBufferFull):
        await bus.send(A, "agent-b", 5)
    assert env.events.of("bus.delivery_failed")
    assert [r.body for r in await bus.receive(B, max_items=10)] == [0, 1, 2, 3, 4]
    await bus.send(A, "agent-b", 6)  # room again
    assert [r.body for r in await bus.receive(B)] == [6]


async def test_ttl_expiry_removes_and_counts(env: Env) -> None:
    bus = await _pair(env)
    await bus.send(A, "agent-b", "short", ttl_s=0.1)
    await bus.send(A, "agent-b", "long", ttl_s=60)
    await anyio.sleep(0.3)
    assert await bus.expire() == 1
    assert [r.body for r in await bus.receive(B)] == ["long"]
    stats = await bus.backend.stats()
    assert stats["counters"]["expired"] == 1  # type: ignore[index]
    for bad in (0, -1, True, "10", 86400 * 2):
        with pytest.raises(ArgumentsInvalid):
            await bus.send(A, "agent-b", "x", ttl_s=bad)  # type: ignore[arg-type]  # wrong types: the point


async def test_policy_denies_and_audits(env: Env) -> None:
    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        if kind == "bus/send" and recipient["principal"] != p.qualified:
            return Decision(False, ("different principal",))
        if kind in ("bus/publish", "bus/subscribe") and not str(topic).startswith("team."):
            return Decision(False, ("topic not granted",))
        return Decision(True, (), {"rate_limit": 3})

    bus = await _pair(env, authorize=authorize)
    with pytest.raises(PolicyDenied):
        await bus.send(A, "agent-c", "x")
    with pytest.raises(PolicyDenied):
        await bus.subscribe(B, "secret.*")
    with pytest.raises(PolicyDenied):
        await bus.publish(A, "secret.x", 1)
    await bus.subscribe(B, "team.*")
    for i in range(3):
        await bus.send(A, "agent-b", i)
    with pytest.raises(PolicyDenied):  # the rate limit condition (3 per minute, per agent)
        await bus.send(A, "agent-b", "over")
    reasons = [d["reasons"] for d in env.events.of("bus.denied")]
    assert len(reasons) == 4


# -- attacks --------------------------------------------------------------------------------


def _with(msg: SecureMessage, **changes: Any) -> SecureMessage:
    d = {f: getattr(msg, f) for f in SecureMessage.__slots__ if f != "_header"}
    d.update(changes)
    return SecureMessage(**d)


async def _rejected(env: Env, bus: Bus, reason: str) -> None:
    assert await bus.receive(B, max_items=10) == []
    assert [d["reason"] for d in env.events.of("bus.rejected")] == [reason]
    assert bus.rejected == {reason: 1}


async def _one_stored(env: Env, bus: Bus) -> SecureMessage:
    await bus.send(A, "agent-b", "original")
    ((_, msg),) = env.stored("agent-b")
    assert [r.body for r in await bus.receive(B)] == ["original"]
    return msg


async def test_tampered_ciphertext_rejected(env: Env) -> None:
    bus = await _pair(env)
    msg = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"x"', to="agent-b")  # type: ignore[arg-type]
    env.inject("agent-b", _with(msg, ciphertext=bytes([msg.ciphertext[0] ^ 1]) + msg.ciphertext[1:]))
    await _rejected(env, bus, "bad signature")


async def test_forged_signature_rejected(env: Env) -> None:
    bus = await _pair(env)
    # signed by C's key but claiming to be from A
    forged = await bus.sealer.seal(bus.ring.local("agent-c"), "direct", b'"give me access"', to="agent-b")  # type: ignore[arg-type]
    env.inject("agent-b", _with(forged, sender="agent-a"))
    await _rejected(env, bus, "bad signature")


async def test_replayed_message_rejected(env: Env) -> None:
    bus = await _pair(env)
    msg = await _one_stored(env, bus)
    env.inject("agent-b", msg)  # the same signed message again
    await _rejected(env, bus, "replayed id")


async def test_wrong_recipient_rejected(env: Env) -> None:
    bus = await _pair(env)
    msg = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"for c"', to="agent-c")  # type: ignore[arg-type]
    env.inject("agent-b", msg)  # moved into B's inbox
    await _rejected(env, bus, "wrong recipient")


async def test_old_timestamp_rejected(env: Env) -> None:
    bus = await _pair(env, max_age_s=1.0, skew_s=0.0)
    msg = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"x"', to="agent-b")  # type: ignore[arg-type]
    future = _with(msg, timestamp_ms=msg.timestamp_ms + 60_000, expires_ms=msg.expires_ms + 60_000)
    # re-signed by A itself (an insider with A's key): only the timestamp check stops it
    sk = bus.ring.local("agent-a").sign  # type: ignore[union-attr]
    future = _with(future, signature=sk.sign(future.signed_bytes()))
    env.inject("agent-b", future)
    assert await bus.receive(B) == []
    assert [d["reason"] for d in env.events.of("bus.rejected")] == ["timestamp outside the window"]


async def test_forged_key_entry_rejected(env: Env) -> None:
    bus = await _pair(env)
    from gateway.bus.crypto import AgentKeys, KeyRing

    # an attacker with store/Redis write access but no bus secret registers a key for "agent-a"
    evil = KeyRing(b"\1" * 32, None)
    keys = AgentKeys.generate("agent-x", "team")
    entry = evil.entry_for(keys)
    await bus.backend.publish_keys(type(entry)("agent-x", "team", entry.sign_pub, entry.dh_pub, entry.mac))
    with pytest.raises(Exception):  # noqa: B017 - BusError: the entry fails its HMAC
        await bus.send(A, "agent-x", "x")


async def test_two_processes_share_redis(env: Env) -> None:
    if env.kind != "redis":
        pytest.skip("two processes share state through Redis only")
    one = await env.bus()
    two = await env.bus()
    await one.register("agent-a", "key:team")
    await two.register("agent-b", "key:team")
    await one.send(A, "agent-b", "across")
    assert [r.body for r in await two.receive(B)] == ["across"]


async def test_redis_down_then_back(env: Env, request: pytest.FixtureRequest) -> None:
    if env.kind != "redis":
        pytest.skip("redis only")
    from gateway.errors import BusUnavailable

    server = request.getfixturevalue("redis_server")
    bus = await _pair(env)
    server.stop()
    with pytest.raises(BusUnavailable):
        await bus.send(A, "agent-b", "while down")
    server.start()
    # a fresh Redis (no persistence in this fixture): re-register, then it works again
    for p in (A, B):
        await bus.register(p.agent, p.qualified)  # type: ignore[arg-type]
    await bus.send(A, "agent-b", "after")
    assert [r.body for r in await bus.receive(B)] == ["after"]


async def test_redis_losing_its_data_recovers(env: Env) -> None:
    if env.kind != "redis":
        pytest.skip("redis only")
    bus = await _pair(env)
    await bus.send(A, "agent-b", "before")
    assert [r.body for r in await bus.receive(B)] == ["before"]
    assert env.url is not None
    redis.Redis.from_url(env.url).flushall()  # a restart without persistence
    for p in (A, B):
        await bus.register(p.agent, p.qualified)  # type: ignore[arg-type]
    await bus.send(A, "agent-b", "after")
    assert [r.body for r in await bus.receive(B)] == ["after"]


async def test_names_resolve_through_the_directory_and_cannot_be_rebound(env: Env) -> None:
    one = await env.bus()
    two = await env.bus()  # another gateway process (on the embedded store: the same data dir)
    await one.register("agent-a", "key:team", name="team/a")
    await two.register("agent-b", "key:team", name="team/b")
    await two.register("agent-c", "key:team", name="team/c")
    msg = await one.send(A, "team/b", "by name")
    assert msg.recipient == "agent-b"
    assert [r.body for r in await two.receive(B)] == ["by name"]
    # an attacker with write access to the store / Redis points the name at another agent
    if env.url is None:
        db = sqlite3.connect(env.data / "bus.db")
        with db:
            db.execute("UPDATE keys SET name='team/b' WHERE agent='agent-c'")
        db.close()
    else:
        redis.Redis.from_url(env.url).hset(f"{PREFIX}names", "team/b", "agent-c")
    fresh = await env.bus()  # no cached entries
    await fresh.register("agent-a", "key:team", name="team/a")
    try:
        again = await fresh.send(A, "team/b", "must not reach c")
    except BusNoAgent:
        pass
    else:
        assert again.recipient == "agent-b"
    assert await two.receive(Principal(id="team", agent="agent-c", source="key")) == []
    with pytest.raises(BusNoAgent):
        await one.send(A, "team/nobody", "x")


# -- per-recipient binding: a delivery copied into another inbox is refused -------------------


async def test_topic_delivery_copied_to_another_subscriber_rejected(env: Env) -> None:
    bus = await _pair(env)
    await bus.subscribe(B, "alerts.*")
    await bus.publish(A, "alerts.disk", "for b only")
    ((_, for_b),) = env.stored("agent-b")
    assert for_b.recipient == "agent-b" and for_b.topic == "alerts.disk"  # bound to its subscriber
    # C subscribes after the publish (it was no recipient); A subscribes too (a publisher is
    # never its own recipient). An attacker with write access copies B's delivery to both.
    await bus.subscribe(C, "alerts.*")
    await bus.subscribe(A, "alerts.*")
    env.inject("agent-c", for_b)
    env.inject("agent-a", for_b)
    assert await bus.receive(C) == []
    assert await bus.receive(A) == []
    assert [d["reason"] for d in env.events.of("bus.rejected")] == ["wrong recipient", "wrong recipient"]
    # rebinding the copy to C breaks the signature (the recipient is signed and is the AEAD data)
    env.inject("agent-c", _with(for_b, recipient="agent-c"))
    assert await bus.receive(C) == []
    assert env.events.of("bus.rejected")[-1]["reason"] == "bad signature"
    # B's own delivery is untouched, and once delivered a copy of it is a replay
    assert [r.body for r in await bus.receive(B)] == ["for b only"]
    env.inject("agent-b", for_b)
    assert await bus.receive(B) == []
    assert env.events.of("bus.rejected")[-1]["reason"] == "replayed id"


async def test_each_subscriber_gets_its_own_binding_of_one_message(env: Env) -> None:
    bus = await _pair(env)
    await bus.subscribe(B, "alerts.*")
    await bus.subscribe(C, "alerts.disk")
    res = await bus.publish(A, "alerts.disk", {"level": 3})
    ((_, for_b),) = env.stored("agent-b")
    ((_, for_c),) = env.stored("agent-c")
    assert for_b.id == for_c.id == res.id  # one message, one id in each replay window
    assert (for_b.recipient, for_c.recipient) == ("agent-b", "agent-c")
    assert for_b.signature != for_c.signature
    got_b, got_c = await bus.receive(B), await bus.receive(C)
    assert [r.body for r in got_b] == [r.body for r in got_c] == [{"level": 3}]
    assert env.events.of("bus.rejected") == []


async def test_direct_request_and_reply_copies_rejected(env: Env) -> None:
    bus = await _pair(env)
    a_keys, b_keys = bus.ring.local("agent-a"), bus.ring.local("agent-b")
    assert a_keys is not None and b_keys is not None
    direct = await bus.sealer.seal(a_keys, "direct", b'"for b"', to="agent-b")
    request = await bus.sealer.seal(a_keys, "request", b'"ask b"', to="agent-b")
    reply = await bus.sealer.seal(b_keys, "reply", b'"answer a"', to="agent-a", reply_to=request.id)
    cases = [
        ("agent-c", "agent-c", direct, "wrong recipient"),  # B's direct message in C's inbox
        ("agent-c", "agent-c", request, "wrong recipient"),  # B's request in C's inbox
        ("agent-c", "agent-c#r", reply, "wrong recipient"),  # A's reply in C's reply inbox
        ("agent-a", "agent-a", reply, "wrong inbox for this kind"),  # a reply in the main inbox
        ("agent-b", "agent-b#r", direct, "wrong inbox for this kind"),  # a message as a reply
    ]
    for agent, inbox, msg, _ in cases:
        env.inject(inbox, msg)
        assert await bus.receiver.take(agent, inbox, 10, 0.0) == []
    assert [d["reason"] for d in env.events.of("bus.rejected")] == [c[3] for c in cases]


@pytest.mark.parametrize("field", ["sender", "topic", "reply_to"])
async def test_a_stored_message_whose_header_is_not_utf8_is_rejected(env: Env, field: str) -> None:
    """Attack: whoever can write the bus store (Redis, shared by replicas) adds a message whose
    header holds the escape \\ud800 (its canonical header is ASCII, so it parses): the receive
    looked the sender up in the key directory with it (Redis and SQLite cannot encode it) and
    failed, every time, so the inbox was stuck. Now it is refused as malformed, naming where,
    and the messages behind it are delivered."""
    bus = await _pair(env)
    msg = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"x"', to="agent-b")  # type: ignore[arg-type]
    env.inject("agent-b", _with(msg, **{field: (getattr(msg, field) or "t") + "\ud800"}))
    await bus.send(A, "agent-b", "after")
    assert [r.body for r in await bus.receive(B, max_items=10)] == ["after"]
    [reason] = [d["reason"] for d in env.events.of("bus.rejected")]
    assert "not valid UTF-8" in reason
