"""The receive checks' edges, in-process against both backends (embedded SQLite, a real
redis-server): the key directory's HMAC cache cannot be fooled by an entry that matches only
half of a verified one, and a delivered id is remembered for as long as a copy of it could pass
the timestamp window (else a replay after the record expired would be delivered again)."""

from __future__ import annotations

import sqlite3
import time

import pytest
import redis

from gateway.bus.crypto import KeyRing, PublicKeys
from gateway.bus.redis_backend import PREFIX
from gateway.errors import BusError
from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - the backends' fixture

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
    bus = await _pair(env)
    me = bus.ring.local("agent-a")
    assert me is not None
    env.inject("agent-b", await bus.sealer.seal(me, "direct", b"\xff not json", to="agent-b"))
    good = await bus.send(A, "agent-b", "fine")
    assert [(r.id, r.body) for r in await bus.receive(B, max_items=10)] == [(good.id, "fine")]
    assert [d["reason"] for d in env.events.of("bus.rejected")] == ["decryption failed"]
