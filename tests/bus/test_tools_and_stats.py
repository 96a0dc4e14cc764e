"""The bus's tool definitions, argument bounds, unsubscribe and the stats `symbi bus stats`
shows, in-process against both backends (embedded SQLite and a real redis-server).

Found by mutation testing (group "bus", scripts/mutate.py): the tool schemas are built at
import (mutmut's forked runs never rebuild them), the stats are read by `symbi bus stats` in a
subprocess, and the bounds of ttl_s / timeout_ms were only tested well inside them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.bus import builtin
from gateway.bus.builtin import BusBuiltin
from gateway.bus.redis_backend import redis_stats, sync_client
from gateway.bus.sealing import ttl_ms_of as _ttl_ms
from gateway.errors import ArgumentsInvalid, BusTimeout
from gateway.events import Event
from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - env is the backends' fixture

pytestmark = pytest.mark.anyio


def test_a_bus_tool_refuses_unknown_arguments_and_declares_its_hints() -> None:
    tool = builtin._tool("t", "a tool", {"a": {"type": "string"}}, ["a"])
    assert (tool.name, tool.description) == ("t", "a tool")
    assert tool.input_schema == {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    assert tool.annotations is not None
    hints = tool.annotations.model_dump(exclude_none=True, by_alias=True)
    assert hints == {
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": False,
        "openWorldHint": False,
    }
    assert all(t.input_schema["additionalProperties"] is False for t in builtin.TOOLS)


def test_ttl_is_bounded_by_the_bus_max_age_and_at_least_a_millisecond() -> None:
    assert _ttl_ms(2, 2000) == 2000  # exactly bus.max_age_s is allowed
    assert _ttl_ms(1.5, 10_000) == 1500
    assert _ttl_ms(0.0001, 1000) == 1
    for bad in (2.001, 0, -1, True, "1", None):
        with pytest.raises(ArgumentsInvalid):
            _ttl_ms(bad, 2000)


async def test_request_timeout_ms_must_be_a_positive_integer(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    tools = BusBuiltin(bus)
    for bad in (0, -5, True, 1.5, "10", None):
        with pytest.raises(ArgumentsInvalid):
            await tools._request(A, {"to": "agent-b", "body": 1, "timeout_ms": bad})
    with pytest.raises(BusTimeout):  # 1 ms is valid: nobody answers in it
        await tools._request(A, {"to": "agent-b", "body": 1, "timeout_ms": 1})


def _recorded(env: Env) -> list[tuple[str, dict[str, Any], str | None]]:  # noqa: F811
    """The events emitted from now on (type, details, principal), still emitted as before."""
    seen: list[tuple[str, dict[str, Any], str | None]] = []
    emit = env.events.emit

    def keep(
        event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        seen.append((event_type, dict(details), principal))
        emit(event_type, details, principal=principal, agent=agent)

    env.events.emit = keep  # type: ignore[method-assign]
    return seen


async def test_unsubscribe_says_whether_there_was_a_subscription_and_audits_who(env: Env) -> None:  # noqa: F811
    seen = _recorded(env)
    bus = await _pair(env)
    await bus.subscribe(A, "news.*")
    assert await bus.unsubscribe(A, "news.*") is True
    assert await bus.unsubscribe(A, "news.*") is False
    assert await bus.unsubscribe(B, "other.*") is False
    gone = [(d, p) for t, d, p in seen if t == Event.BUS_UNSUBSCRIBE]
    assert gone == [
        ({"topic": "news.*", "removed": True}, A.id),
        ({"topic": "news.*", "removed": False}, A.id),
        ({"topic": "other.*", "removed": False}, B.id),
    ]


async def test_stats_count_what_the_bus_did(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    for i in range(3):
        await bus.send(A, "agent-b", i)
    await bus.send(A, "agent-c", "x")
    assert len(await bus.receive(B, max_items=10)) == 3
    await bus.subscribe(A, "news.*")
    await bus.backend.bump("rejected")  # one, by default
    stats = await bus.backend.stats()
    want_counters = {"sent": 4, "delivered": 3, "rejected": 1, "expired": 0, "buffer_full": 0}
    assert stats["counters"] == want_counters
    pending = stats["pending_by_inbox"]
    assert isinstance(pending, dict) and {k: n for k, n in pending.items() if n} == {"agent-c": 1}
    assert (stats["subscriptions"], stats["agents"]) == (1, 3)
    if env.url is None:
        assert stats["backend"] == "embedded" and stats["stored"] == {"pending": 1, "delivered": 3}
        assert pending == {"agent-c": 1}
    else:
        assert stats["backend"] == "redis" and stats["stored"] == {"pending": 1}
        assert pending == {"agent-b": 0, "agent-c": 1}  # a Redis stream stays, emptied
        with sync_client(env.url) as r:
            assert redis_stats(r) == stats  # what `symbi bus stats` reads


def test_a_redis_url_in_errors_and_logs_carries_no_password() -> None:
    from gateway.errors import BusUnavailable

    # the bus's errors show the state's one safe_url (tests/state/test_health.py): the
    # password in the netloc or the query hidden
    for url in ("redis://user:s3cret@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=s3cret"):
        with pytest.raises(BusUnavailable) as e, sync_client(url):  # nothing listens on port 1
            pass
        assert "s3cret" not in str(e.value) and "127.0.0.1:1" in str(e.value)


async def test_the_bus_tools_answer_with_their_documented_fields(env: Env) -> None:  # noqa: F811
    import anyio

    bus = await _pair(env)
    tools = BusBuiltin(bus)
    before = int(time.time() * 1000)
    subscribed = await tools._subscribe(B, {"topic": "news.*"})
    # it says when the subscription expires (bus.subscription_ttl_s, a day by default)
    assert set(subscribed) == {"subscribed", "expires_ms"} and subscribed["subscribed"] == "news.*"
    assert before + 86_400_000 <= subscribed["expires_ms"] <= int(time.time() * 1000) + 86_400_000
    pub = await tools._publish(A, {"topic": "news.x", "body": 1})
    assert set(pub) == {"id", "delivered_to", "refused"} and pub["refused"] == []
    answer: dict[str, Any] = {}

    async def ask() -> None:
        answer.update(await tools._request(A, {"to": "agent-b", "body": "q", "timeout_ms": 60_000}))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            asked: list[dict[str, Any]] = []
            while not asked:
                got = (await tools._receive(B, {"max": 10, "wait_ms": 50}))["messages"]
                asked = [m for m in got if m["kind"] == "request"]
            req = asked[0]
            assert set(req) == {"id", "from", "kind", "topic", "reply_to", "timestamp_ms", "body"}
            assert (req["from"], req["body"], req["reply_to"]) == ("agent-a", "q", None)
            rep = await tools._reply(B, {"request_id": req["id"], "body": "a"})
            assert rep == {"id": rep["id"], "to": "agent-a", "reply_to": req["id"]}
    reply = answer["reply"]
    assert (reply["from"], reply["reply_to"], reply["body"]) == ("agent-b", req["id"], "a")
    assert isinstance(reply["timestamp_ms"], int)


async def test_a_request_is_bounded_by_max_age_decided_on_the_peer_and_its_timeout_audited(
    env: Env,  # noqa: F811
) -> None:
    from gateway.context import Decision

    seen = _recorded(env)
    asked: list[tuple[str, Any]] = []

    async def authorize(kind: str, principal: Any, recipient: Any, topic: Any) -> Decision:
        asked.append((kind, recipient))
        return Decision(True, (), {})

    bus = await _pair(env, authorize=authorize, max_age_s=0.5)
    for bad in (0, -1, 0.501, 500.0):
        with pytest.raises(ArgumentsInvalid):
            await bus.request(A, "agent-b", "q", timeout_s=bad)
    with pytest.raises(BusTimeout) as timed_out:  # exactly bus.max_age_s is allowed
        await bus.request(A, "agent-b", "q", timeout_s=0.5)
    assert timed_out.value.reasons
    assert asked == [("bus/send", {"agent": "agent-b", "principal": B.qualified})]
    sends = [(d["recipient"], p) for t, d, p in seen if t == Event.BUS_SEND]
    assert sends == [("agent-b", A.id)]
    timeouts = [(d, p) for t, d, p in seen if t == Event.BUS_REQUEST_TIMEOUT]
    assert len(timeouts) == 1 and timeouts[0][1] == A.id
    assert {k: v for k, v in timeouts[0][0].items() if k != "id"} == {
        "recipient": "agent-b",
        "timeout_ms": 500,
    }
    assert isinstance(timeouts[0][0]["id"], str)


async def test_expiry_counts_the_expired_messages_of_every_inbox(env: Env) -> None:  # noqa: F811
    import time

    bus = await _pair(env)
    await bus.send(A, "agent-b", 1, ttl_s=0.001)
    await bus.send(A, "agent-c", 2, ttl_s=0.001)
    await bus.send(A, "agent-b", 3)  # bus.max_age_s: not expired
    later_ms = int(time.time() * 1000) + 60_000  # a sweep a minute later
    assert await bus.backend.expire(later_ms, 3_600_000) == 2
    stats = await bus.backend.stats()
    assert isinstance(stats["counters"], dict) and stats["counters"]["expired"] == 2
    assert [r.body for r in await bus.receive(B, max_items=10)] == [3]


def test_each_topic_has_its_own_key_derived_as_documented(tmp_path: Any) -> None:
    """Topic messages are sealed under HKDF(secret, info="symbi-bus/v1 topic\\0" + topic): a
    ciphertext of one topic does not open under another, and every gateway sharing the secret
    (the Redis backend) derives the same key."""
    import os

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    from gateway.bus.crypto import KeyRing

    secret = os.urandom(32)
    ring = KeyRing(secret, None)
    nonce = os.urandom(12)
    sealed = ring.topic_cipher("news.a").encrypt(nonce, b"body", None)
    with pytest.raises(InvalidTag):
        ring.topic_cipher("news.b").decrypt(nonce, sealed, None)
    expected = AESGCM(HKDF(SHA256(), 32, salt=None, info=b"symbi-bus/v1 topic\0news.a").derive(secret))
    assert expected.decrypt(nonce, sealed, None) == b"body"
    assert KeyRing(secret, None).topic_cipher("news.a").decrypt(nonce, sealed, None) == b"body"
