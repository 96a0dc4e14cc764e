"""Who a message goes to, and what a rejection leaves in the audit log, in-process against the
embedded store (and a real redis-server where the backend matters):

- a recipient is a non-empty id or name; a runtime name resolves to its agent (Bus(resolve=...)
  as make_bus sets it); a configured agent that has not run yet is registered on the first
  message to it (the message waits in its inbox) and can send before its first run; a name
  found in the key directory reaches the policy with the entry's principal;
- every rejection (unknown sender, timestamp window, replay) is audited with the message's
  metadata, the receiving agent and the inbox; a topic delivery moved into a reply inbox is
  refused; a receive woken by a send leaves no wake-up behind (/api/state's bus_wakeups).

Found by mutation testing (group "bus", scripts/mutate.py): each of these could change with the
suite green."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import pytest

from gateway.bus.assemble import _resolver
from gateway.bus.receiving import REPLY_SUFFIX
from gateway.config.model import Config
from gateway.context import Decision, Principal
from gateway.errors import ArgumentsInvalid
from gateway.runtime.agents import AgentRegistry
from tests.bus.test_authorization import Attributed
from tests.bus.test_core import A, B, C, Env, _one_stored, _pair, env  # noqa: F401 - the backends' fixture
from tests.runtime.test_core import Recorder as RuntimeRecorder

pytestmark = pytest.mark.anyio

H = Principal(id="agent:h", kind="agent", agent="agent-h", source="key")  # a configured agent's principal


def _attributed(e: Env) -> Attributed:
    e.events = Attributed()
    return e.events


def _recording() -> tuple[list[tuple[str, Any]], Any]:
    asked: list[tuple[str, Any]] = []

    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        asked.append((kind, recipient))
        return Decision(True, ())

    return asked, authorize


@pytest.mark.parametrize("to", ["", 7, None, ["agent-b"]])
async def test_a_recipient_must_be_a_non_empty_id_or_name(env: Env, to: Any) -> None:  # noqa: F811
    bus = await _pair(env)
    with pytest.raises(ArgumentsInvalid):
        await bus.send(A, to, "x")


async def test_a_configured_agent_is_registered_on_the_first_message_to_it(env: Env) -> None:  # noqa: F811
    asked, authorize = _recording()
    bus = await _pair(env, authorize=authorize)
    bus.preregister("agent-h", "key:agent:h", "h")  # configured, not running: no directory entry yet
    msg = await bus.send(A, "agent-h", "for your next run")
    assert msg.recipient == "agent-h"
    assert asked == [("bus/send", {"agent": "agent-h", "principal": "key:agent:h"})]
    assert [r.body for r in await bus.receive(H)] == ["for your next run"]


async def test_a_configured_agent_that_has_not_run_yet_can_send(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    bus.preregister("agent-h", "key:agent:h", "h")
    await bus.send(H, "agent-b", "from h")  # its directory entry is published before it is needed
    assert [(r.sender, r.body) for r in await bus.receive(B)] == [("agent-h", "from h")]
    assert env.events.of("bus.rejected") == []


async def test_a_runtime_name_resolves_to_its_agent(env: Env) -> None:  # noqa: F811
    reg = AgentRegistry(RuntimeRecorder())
    run = reg.add_hosted(
        "mailer", Principal(id="agent:mailer", kind="agent", source="key"), priority=0, run=1
    )
    bus = await _pair(env, resolve=_resolver(reg, Config()))
    await bus.register(run.id, "key:agent:mailer")  # no name in the directory: only the runtime knows it
    msg = await bus.send(A, "mailer", "by runtime name")
    assert msg.recipient == run.id
    got = await bus.receive(Principal(id="agent:mailer", kind="agent", agent=run.id, source="key"))
    assert [r.body for r in got] == ["by runtime name"]


async def test_a_name_from_the_directory_reaches_the_policy_with_the_entrys_principal(env: Env) -> None:  # noqa: F811
    asked, authorize = _recording()
    bus = await _pair(env, authorize=authorize)
    await bus.register("agent-c", "key:other", name="other/c")
    msg = await bus.send(A, "other/c", "by name")
    assert msg.recipient == "agent-c"
    assert asked == [("bus/send", {"agent": "agent-c", "principal": "key:other"})]


async def test_a_message_from_an_unknown_sender_is_rejected_and_audited_with_its_metadata(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env)
    c = bus.ring.local("agent-c")
    assert c is not None
    sealed = await bus.sealer.seal(c, "direct", b'"x"', to="agent-b")
    forged = dataclasses.replace(sealed, sender="agent-nobody")
    env.inject("agent-b", forged)
    assert await bus.receive(B) == []
    (d,) = events.of("bus.rejected")
    assert (d["reason"], d["id"], d["sender"], d["inbox"]) == (
        "unknown sender",
        forged.id,
        "agent-nobody",
        "agent-b",
    )
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]


async def test_a_message_outside_the_timestamp_window_is_audited_with_its_metadata(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env, max_age_s=100.0)
    a = bus.ring.local("agent-a")
    assert a is not None
    future = await bus.sealer.seal(a, "direct", b'"x"', to="agent-b")
    future = dataclasses.replace(future, timestamp_ms=future.timestamp_ms + 3_600_000)
    future = dataclasses.replace(future, signature=a.sign.sign(future.signed_bytes()))
    env.inject("agent-b", future)
    assert await bus.receive(B) == []
    (d,) = events.of("bus.rejected")
    assert (d["reason"], d["id"], d["sender"]) == ("timestamp outside the window", future.id, "agent-a")


async def test_a_replay_is_audited_for_the_receiving_agent_its_inbox_and_the_message(env: Env) -> None:  # noqa: F811
    events = _attributed(env)
    bus = await _pair(env)
    msg = await _one_stored(env, bus)
    env.inject("agent-b", msg)
    assert await bus.receive(B) == []
    (d,) = events.of("bus.rejected")
    assert (d["reason"], d["id"], d["sender"], d["inbox"]) == ("replayed id", msg.id, "agent-a", "agent-b")
    assert [(p, a) for t, p, a in events.who if t == "bus.rejected"] == [(None, "agent-b")]


async def test_a_topic_delivery_moved_into_a_reply_inbox_is_refused(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    await bus.subscribe(B, "news")
    a = bus.ring.local("agent-a")
    assert a is not None
    sealed = await bus.sealer.seal(a, "topic", b'"x"', to="agent-b", topic="news")
    env.inject("agent-b" + REPLY_SUFFIX, sealed)  # where B waits for replies to its requests
    assert await bus.receiver.take("agent-b", "agent-b" + REPLY_SUFFIX, 10, 0) == []
    assert [d["reason"] for d in env.events.of("bus.rejected")] == ["malformed topic message"]


async def test_a_receive_woken_by_a_send_leaves_no_wakeup_behind(env: Env) -> None:  # noqa: F811
    bus = await _pair(env)
    async with anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(0.1)
            await bus.send(A, "agent-b", "late")

        tg.start_soon(later)
        got = await bus.receive(B, wait_s=5)
    assert [r.body for r in got] == ["late"]
    assert bus.footprint().get("bus_wakeups", 0) == 0


async def test_a_shared_name_stays_with_the_agent_that_registered_it_last(env: Env) -> None:  # noqa: F811
    """Two agents under one name (two sessions of one principal/client): the directory answers
    with the one registered last; an agent acting on the bus does not publish itself again, so
    sending or receiving does not take the name over."""
    bus = await _pair(env)
    await bus.register("agent-a", "key:team", name="team/dup")
    await bus.register("agent-b", "key:team", name="team/dup")
    await bus.send(A, "agent-c", "a acts")
    await bus.receive(A)
    msg = await bus.send(C, "team/dup", "to the name")
    assert msg.recipient == "agent-b"
