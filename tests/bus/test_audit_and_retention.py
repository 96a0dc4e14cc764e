"""What the bus writes to the audit log when it rejects or expires a message, and how long a
settled message is kept -- on the embedded backend and a real redis-server.

Found by mutation testing (group "bus": receiving._reject__mutmut_3/10/11/12/15/18,
core.expire__mutmut_13/14, embedded.expire__mutmut_26 survived): the rejections and expiries
themselves were tested, not the events' types and fields, the agent they are attributed to,
the per-reason count, nor the retention of settled messages. The clock is driven by aging
stored rows and by calling the backend's sweep with a later time, as tests/bus/test_core.py
does; nothing here depends on how long anything takes.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import anyio
import pytest
import redis

from gateway.bus.redis_backend import GROUP, PREFIX
from gateway.events import Event
from tests.bus.test_core import B, Env, Recorder, _pair, env  # noqa: F401 - env: the fixture of both backends

pytestmark = pytest.mark.anyio


class AgentRecorder(Recorder):
    """Also keeps the agent each event is attributed to."""

    def __init__(self) -> None:
        super().__init__()
        self.agents: list[tuple[str, str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        super().emit(event_type, details, principal=principal, agent=agent)
        self.agents.append((event_type, agent))

    def with_agent(self, kind: str) -> list[tuple[dict[str, Any], str | None]]:
        return [(d, a) for (t, d), (_, a) in zip(self.events, self.agents, strict=True) if t == kind]


def _recording(e: Env) -> AgentRecorder:
    rec = AgentRecorder()
    e.events = rec
    return rec


def _inject_unreadable(e: Env, inbox: str) -> None:
    """An entry that is not a message at all (written by someone with store access)."""
    if e.url is None:
        db = sqlite3.connect(e.data / "bus.db")
        with db:
            db.execute(
                "INSERT INTO messages(inbox, id, expires_ms, ts_ms, h, n, c, s) VALUES (?,?,?,?,?,?,?,?)",
                (inbox, "junk", 2**62, int(time.time() * 1000), b"not a header", b"", b"", b""),
            )
        db.close()
    else:
        redis.Redis.from_url(e.url).xadd(f"{PREFIX}inbox:{inbox}", {"h": b"not a header", "e": str(2**62)})


async def test_a_rejected_message_is_audited_with_its_metadata_and_the_receiving_agent(env: Env) -> None:  # noqa: F811
    rec = _recording(env)
    bus = await _pair(env)
    ring = bus.ring
    for n in range(2):  # sealed for agent-c, moved into agent-b's inbox: twice, same reason
        msg = await bus.sealer.seal(ring.local("agent-a"), "direct", b'"for c"', to="agent-c")  # type: ignore[arg-type]
        env.inject("agent-b", msg)
        assert await bus.receive(B) == []
        assert rec.with_agent(Event.BUS_REJECTED)[n] == (
            {**msg.metadata(), "inbox": "agent-b", "reason": "wrong recipient"},
            "agent-b",  # the agent whose inbox it was, not the claimed sender
        )
        # what is audited: never the body, its nonce or its signature
        assert not {"ciphertext", "nonce", "signature", "body"} & set(rec.of(Event.BUS_REJECTED)[n])
    assert bus.receiver.rejected == {"wrong recipient": 2}  # counted per reason
    stats = await bus.backend.stats()
    assert stats["counters"]["rejected"] == 2  # type: ignore[index]
    # an entry that is not even a message: audited with where and why, and nothing else
    _inject_unreadable(env, "agent-b")
    assert await bus.receive(B) == []
    ((details, agent),) = rec.with_agent(Event.BUS_REJECTED)[2:]
    assert set(details) == {"inbox", "reason"} and details["inbox"] == "agent-b" and agent == "agent-b"
    assert isinstance(details["reason"], str) and details["reason"]
    assert sum(bus.receiver.rejected.values()) == 3


async def test_expired_messages_are_audited_with_their_count(env: Env) -> None:  # noqa: F811
    rec = _recording(env)
    bus = await _pair(env)
    for body in (1, 2):
        await bus.send(bus_principal("agent-a"), "agent-b", body, ttl_s=0.001)
    await bus.send(bus_principal("agent-a"), "agent-b", 3)  # bus.max_age_s: not expired
    last_expiry = max(m.expires_ms for _, m in env.stored("agent-b")[:2])
    while int(time.time() * 1000) <= last_expiry:  # until the wall clock has passed both ttls
        await anyio.sleep(0.005)
    assert await bus.expire() == 2
    assert rec.with_agent(Event.BUS_EXPIRED) == [({"count": 2}, None)]  # one event per sweep
    assert await bus.expire() == 0
    assert len(rec.of(Event.BUS_EXPIRED)) == 1  # a sweep that removed nothing says nothing
    assert [r.body for r in await bus.receive(B)] == [3]


def bus_principal(agent: str) -> Any:
    from gateway.context import Principal

    return Principal(id="team", agent=agent)


def _rows(e: Env) -> dict[str, str]:
    """id -> state of every stored row of the embedded backend."""
    db = sqlite3.connect(e.data / "bus.db")
    names = {0: "pending", 1: "delivered", 2: "rejected", 3: "expired"}
    rows = {i: names[s] for i, s in db.execute("SELECT id, state FROM messages")}
    db.close()
    return rows


def _age(e: Env, msg_id: str, ts_ms: int) -> None:
    db = sqlite3.connect(e.data / "bus.db")
    with db:
        db.execute("UPDATE messages SET ts_ms=? WHERE id=?", (ts_ms, msg_id))
    db.close()


async def test_settled_messages_are_kept_for_the_configured_retention_then_purged(env: Env) -> None:  # noqa: F811
    if env.kind != "embedded":
        pytest.skip("Redis deletes a settled entry when it is settled (tested below)")
    bus = await _pair(env, max_age_s=3600)  # bus.max_age_s: also how long settled rows are kept
    a = bus_principal("agent-a")
    old = await bus.send(a, "agent-b", "old")
    recent = await bus.send(a, "agent-b", "recent")
    assert [r.body for r in await bus.receive(B, max_items=2)] == ["old", "recent"]
    wrong = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"for c"', to="agent-c")  # type: ignore[arg-type]
    env.inject("agent-b", wrong)
    assert await bus.receive(B) == []  # rejected: settled too
    unread = await bus.send(a, "agent-b", "unread")
    assert _rows(env) == {
        old.id: "delivered",
        recent.id: "delivered",
        wrong.id: "rejected",
        unread.id: "pending",
    }
    now = int(time.time() * 1000)
    retention = 3600 * 1000
    _age(env, old.id, now - retention - 60_000)  # settled a minute before the retention ends
    _age(env, wrong.id, now - retention - 60_000)
    _age(env, recent.id, now - retention + 600_000)  # ten minutes left
    _age(env, unread.id, now - retention - 60_000)  # old but unread and unexpired: kept
    assert await bus.expire() == 0  # nothing expired: only settled rows were purged
    assert _rows(env) == {recent.id: "delivered", unread.id: "pending"}
    assert [r.body for r in await bus.receive(B)] == ["unread"]


async def test_redis_keeps_no_settled_entry(env: Env) -> None:  # noqa: F811
    if env.kind != "redis":
        pytest.skip("the embedded backend keeps settled rows for the retention (tested above)")
    assert env.url is not None
    bus = await _pair(env)
    a = bus_principal("agent-a")
    await bus.send(a, "agent-b", "read")
    wrong = await bus.sealer.seal(bus.ring.local("agent-a"), "direct", b'"for c"', to="agent-c")  # type: ignore[arg-type]
    env.inject("agent-b", wrong)
    assert [r.body for r in await bus.receive(B, max_items=5)] == ["read"]  # one delivered, one rejected
    unread = await bus.send(a, "agent-b", "unread")
    # the delivered and the rejected entry are gone from the stream; the unread one waits
    assert [m.id for _, m in env.stored("agent-b")] == [unread.id]
    pending: Any = redis.Redis.from_url(env.url).xpending(f"{PREFIX}inbox:agent-b", GROUP)
    assert pending["pending"] == 0  # nor left fetched-but-unacknowledged in the group
