"""Receiving (``gateway.bus.receiving``) against both backends (embedded SQLite, a real
redis-server): a topic message whose topic the receiver may no longer subscribe to is checked
before anything is settled, so it stays pending, never lost, and never in the way."""

from __future__ import annotations

import pytest

from tests.bus.test_authorization import subscribing_as_granted
from tests.bus.test_core import A, C, Env, _pair, env  # noqa: F401 - env is the backends' fixture

pytestmark = pytest.mark.anyio


async def test_a_receive_refused_by_the_grant_leaves_the_message_for_when_it_is_allowed(
    env: Env,  # noqa: F811
) -> None:
    # Bug: receive settled a topic message as delivered, then asked the policy again and,
    # refused, dropped it: an accepted message was lost, counted as delivered.
    granted = {"payroll.*"}
    bus = await _pair(env, authorize=subscribing_as_granted(granted))
    await bus.subscribe(C, "payroll.*")
    granted.clear()  # the grant goes (a policy reload)
    for month in ("april", "may"):
        await bus.publish(A, f"payroll.{month}", month)
    assert await bus.receive(C, max_items=1) == []  # refused: nothing taken
    # and what is held back never keeps a later message from being received
    await bus.send(A, "agent-c", "direct")
    assert [r.body for r in await bus.receive(C, max_items=1)] == ["direct"]
    assert await bus.receive(C, max_items=1, wait_s=0.3) == []  # waits, then nothing
    granted.add("payroll.*")  # allowed again: the messages were kept for it, in order
    assert [r.body for r in await bus.receive(C)] == ["april", "may"]
    stats = await bus.backend.stats()
    assert isinstance(stats["counters"], dict) and stats["counters"]["delivered"] == 3
