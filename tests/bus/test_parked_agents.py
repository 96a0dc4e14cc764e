"""A parked agent (its id recurs: a stateless client idled out) keeps no topic subscription.

Attack (red team 28, session 41): parked, an agent kept its subscriptions for
``bus.max_age_s`` (a day). Nobody drains its inbox while it is away, yet every publication
on its topics sealed a copy into it, charged to its principal's bytes, until half its buffer
was full; from then on every publication named it as refused to its publisher. Now its
subscriptions go when it is parked (its direct messages still wait for its return); back,
it subscribes again.
"""

from __future__ import annotations

import pytest

from tests.bus.test_core import A, B, Env, _pair, env  # noqa: F401 - env is the backends' fixture

pytestmark = pytest.mark.anyio


async def test_a_parked_agent_gets_no_topic_copies_but_keeps_its_direct_mail(env: Env) -> None:  # noqa: F811
    bus = await _pair(env, buffer_size=8)
    await bus.subscribe(B, "news.*")
    task = bus.park("agent-b")
    assert task is not None  # a loop runs: the removal is a task
    await task  # its subscriptions removed
    results = [await bus.publish(A, "news.x", {"n": n}) for n in range(20)]
    # was: 4 copies (half the buffer of 8) stored for nobody, then "refused" 16 times
    assert [(r.delivered_to, r.refused) for r in results] == [(0, ())] * 20
    assert env.stored("agent-b") == []
    assert await bus.backend.subscriptions() == {}
    sent = await bus.send(A, "agent-b", "while away")  # direct mail still waits for its return
    assert [m.id for _, m in env.stored("agent-b")] == [sent.id]
    # back: it subscribes again, and is delivered to again
    await bus.register("agent-b", B.qualified)
    await bus.subscribe(B, "news.*")
    assert (await bus.publish(A, "news.x", "back")).delivered_to == 1
    assert [r.body for r in await bus.receive(B, max_items=10)] == ["while away", "back"]


async def test_an_agent_back_before_its_subscriptions_went_keeps_them(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    await bus.subscribe(B, "news.*")
    task = bus.park("agent-b")
    await bus.register("agent-b", B.qualified)  # back before the removal ran
    assert task is not None
    await task
    assert await bus.backend.subscriptions() == {"agent-b": {"news.*"}}


async def test_a_park_removes_the_parked_agents_subscriptions_only(env: Env) -> None:  # noqa: F811
    # both backends: what the parked agent made up to now goes (the store's own clock), another
    # agent's stays, and one it makes since is its own again (the next park takes it)
    bus = await _pair(env)
    await bus.subscribe(B, "old")
    await bus.subscribe(B, "renewed")
    await bus.subscribe(A, "news")
    assert await bus.backend.unsubscribe_parked(["agent-b", "agent-x"]) == []  # none live elsewhere
    assert await bus.backend.subscriptions() == {"agent-a": {"news"}}
    await bus.subscribe(B, "new")
    assert await bus.backend.subscriptions() == {"agent-a": {"news"}, "agent-b": {"new"}}
