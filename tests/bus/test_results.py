"""One ``bus__receive`` result has a ceiling (``gateway.bus.results.RECEIVE_MAX_BYTES``), and a
message that could never fit it is refused when it is sent, on both backends.

Attacks (red team 28, session 41): without the policy's ``max_result_bytes``, one receive
took every message asked for (up to 1,000 of up to ``bus.max_body_bytes`` each, carried
twice in the result): 40 messages of 200 KB made one result of about 16 MB. And a message
larger than any receive's result was accepted, then taken alone by a receive (the first is
always taken) and cut: marked delivered, never read whole; its sender never knew.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.bus import results
from gateway.bus.builtin import BusBuiltin, receive_budget
from gateway.bus.receiving import Received
from gateway.bus.results import RECEIVE_MAX_BYTES, tool_result
from gateway.context import CallContext, Decision
from gateway.errors import ArgumentsInvalid
from gateway.policy.results import result_size
from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - env is the backends' fixture

pytestmark = pytest.mark.anyio


def _receive_call(conditions: dict[str, Any] | None) -> CallContext:
    call = CallContext(principal=B, kind="tools/call", target="bus__receive", arguments={"max": 1000})
    if conditions is not None:
        call.decision = Decision(allow=True, reasons=(), conditions=conditions)
    return call


async def test_one_receive_without_a_policy_cap_stays_within_the_ceiling(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    body = "x" * 200_000
    for _ in range(40):  # about 16 MB as one result
        await bus.send(A, "agent-b", body)
    tools, call = BusBuiltin(bus), _receive_call(None)
    taken = 0
    while taken < 40:
        out = await tools._receive(B, call.arguments, receive_budget(call))
        assert 0 < len(out["messages"]) and result_size(tool_result(out)) <= RECEIVE_MAX_BYTES
        taken += len(out["messages"])
    assert taken == 40  # none lost: what did not fit waited for the next receive


def test_a_policy_cap_above_the_ceiling_does_not_lift_it() -> None:
    assert receive_budget(_receive_call({"max_result_bytes": 10 * RECEIVE_MAX_BYTES})) < RECEIVE_MAX_BYTES
    assert receive_budget(_receive_call({"max_result_bytes": 10_000})) < 10_000


async def test_a_message_that_cannot_fit_one_receive_is_refused_at_send(env: Env) -> None:  # noqa: F811
    bus = await _pair(env, max_body_bytes=4 * 1024 * 1024)
    await bus.subscribe(B, "news")
    big = '"' * 1_500_000  # 3 MB stored (each quote escaped), more than 8 MB in a result
    with pytest.raises(ArgumentsInvalid):
        await bus.send(A, "agent-b", big)
    with pytest.raises(ArgumentsInvalid):
        await bus.publish(A, "news", big)
    # 1.2 MB of DEL (8 bytes each in a result) passed the old cheap bound (5 a byte): accepted,
    # then rejected by every receive
    with pytest.raises(ArgumentsInvalid):
        await bus.send(A, "agent-b", "\x7f" * 1_200_000)
    assert env.stored("agent-b") == []
    # a body within bus.max_body_bytes that fits a result is sent, and received whole
    fits = "y" * 3_000_000
    await bus.send(A, "agent-b", fits)
    (got,) = await bus.receive(B, max_bytes=receive_budget(_receive_call(None)))
    assert got.body == fits


async def test_a_message_larger_than_a_receives_policy_cap_waits_for_a_receive_it_fits(
    env: Env,  # noqa: F811
) -> None:
    # was: taken alone (the first always was), its result cut to the policy's cap; then
    # rejected (review, session 41): lost, though a receive with a larger cap could take it
    bus = await _pair(env)
    big = await bus.send(A, "agent-b", "z" * 5_000)
    small = await bus.send(A, "agent-b", "ok")
    got = await bus.receive(B, max_items=10, max_bytes=1_000)
    assert [r.id for r in got] == [small.id]
    assert bus.rejected == {}
    assert [r.id for r in await bus.receive(B, max_items=10)] == [big.id]


async def test_a_policy_cap_under_the_envelope_destroys_nothing(env: Env) -> None:  # noqa: F811
    """A cap below a result's envelope leaves a budget of 0: every message was rejected, the
    whole inbox lost to a policy condition that applied for one receive."""
    bus = await _pair(env)
    sent = [await bus.send(A, "agent-b", f"m{i}") for i in range(3)]
    budget = receive_budget(_receive_call({"max_result_bytes": 400}))
    assert budget == 0
    assert await bus.receive(B, max_items=10, max_bytes=budget) == []
    assert bus.rejected == {}
    assert [r.id for r in await bus.receive(B, max_items=10)] == [m.id for m in sent]


def _stored(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)  # as Sealer.body stores it


@pytest.mark.parametrize(
    "stored",
    [
        _stored("é" * 1000),
        _stored("\U0001f600" * 1000),
        _stored('"\\' * 1000),
        _stored("\x01\x1f" * 1000),
        _stored("\x7f" * 1000),
        _stored({"k": ["a", 1, None, {"é": "\U0001f600"}] * 200}),
        _stored([[[]]] * 500),
        # floats as a sender bypassing Sealer.body may store them (json.dumps writes them longer)
        "1e15",
        "-1e15",
        "1E15",
        "1e400",
        "[" + ",".join(["1e15"] * 2000) + "]",  # the worst found: 7.8 bytes a stored byte
        "[" + ",".join(["1e15", "-1e15", "1E15", "1e400", "-1e400"] * 200) + "]",
        "{" + ",".join(f'"{i}":1e15' for i in range(500)) + "}",
    ],
    ids=[
        *("2-byte", "4-byte", "quotes-backslashes", "controls", "delete", "nested", "separators"),
        *("float", "negative-float", "upper-exponent", "infinite-float"),
        *("float-array", "mixed-floats", "float-object"),
    ],
)
def test_the_cheap_bound_is_never_under_what_a_body_adds_to_a_result(stored: str) -> None:
    """A send skips serialising the body again (three ``json.dumps``) when its bound cannot
    reach the ceiling, and a receive far under its budget sums bounds: that must be an upper
    bound for every body as stored, Sealer's form or not (5 bytes per stored byte was not, for
    a DEL's 8; a float a sender wrote short, 1e15, is 7.8)."""
    from gateway.bus import results

    data = stored.encode()
    bound = (
        results.ITEM_BYTES_PER_BODY_BYTE * len(data) + results.ITEM_KEY_BYTES + results.ITEM_METADATA_BYTES
    )
    assert results.item_bytes_of_body(json.loads(data)) <= bound


async def test_a_receive_far_under_its_budget_serialises_no_message(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every receive has a budget (the ceiling), so every message was measured exactly: three
    ``json.dumps`` each, for receives far under it (review, session 42)."""
    from gateway.bus import receiving

    measured: list[int] = []

    def counted(item: dict[str, Any]) -> int:
        measured.append(1)
        return results.item_bytes(item)

    monkeypatch.setattr(receiving, "item_bytes", counted)
    bus = await _pair(env)
    for i in range(50):
        await bus.send(A, "agent-b", {"n": i, "text": "é" * 100})
    got = await bus.receive(B, max_items=1000, max_bytes=receive_budget(_receive_call(None)))
    assert len(got) == 50 and measured == []


async def test_a_receive_near_its_budget_takes_exactly_what_fits(env: Env) -> None:  # noqa: F811
    """The bounds summed overstate (four times here); near the budget the messages are
    measured, so a receive still takes every message whose exact size fits."""
    bus = await _pair(env)
    body = "x" * 100
    sent = [await bus.send(A, "agent-b", body) for _ in range(12)]
    exact = [
        Received(
            m.id, m.sender, m.kind, m.topic, m.reply_to, m.timestamp_ms, m.expires_ms, body, 0
        ).result_bytes()
        for m in sent
    ]
    got = await bus.receive(B, max_items=100, max_bytes=sum(exact[:10]))
    assert [r.id for r in got] == [m.id for m in sent[:10]]
    assert [r.id for r in await bus.receive(B, max_items=100)] == [m.id for m in sent[10:]]
