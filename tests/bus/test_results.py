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

from gateway.bus.builtin import BusBuiltin, receive_budget
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


@pytest.mark.parametrize(
    "body",
    [
        "é" * 1000,
        "\U0001f600" * 1000,
        '"\\' * 1000,
        "\x01\x1f" * 1000,
        {"k": ["a", 1, None, {"é": "\U0001f600"}] * 200},
        [[[]]] * 500,
    ],
    ids=["2-byte", "4-byte", "quotes-backslashes", "controls", "nested", "separators"],
)
def test_the_cheap_bound_is_never_under_what_a_body_adds_to_a_result(body: Any) -> None:
    """A send skips serialising the body again (three ``json.dumps``) when 5 bytes per stored
    byte cannot reach the ceiling: that must be an upper bound for every kind of body."""
    from gateway.bus import results

    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()  # as Sealer.body stores it
    bound = (
        results.ITEM_BYTES_PER_BODY_BYTE * len(data) + results.ITEM_KEY_BYTES + results.ITEM_METADATA_BYTES
    )
    assert results.item_bytes_of_body(body) <= bound
