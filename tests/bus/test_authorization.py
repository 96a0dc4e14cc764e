"""Who may send: every send, publish and subscribe asks the authorizer (the policy with the bus
kinds; tests/bus/test_gateway_bus.py runs the real policy) with the caller, the recipient's agent
and principal or the topic; a denial is PolicyDenied carrying the policy's reasons and a
``bus.denied`` event with what was asked; the rate limit the policy grants is counted per agent
(RateLimited). In-process, the embedded store, a real CallCounters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.bus import core
from gateway.bus.core import Bus
from gateway.bus.crypto import KeyRing
from gateway.bus.embedded import EmbeddedBackend
from gateway.context import Decision, Principal
from gateway.errors import BusNoAgent, PolicyDenied, RateLimited
from gateway.policy.inputdoc import CallCounters
from tests.bus.test_core import Recorder


class Attributed(Recorder):
    """The events with who they are attributed to (the audit log's principal and agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.who: list[tuple[str, str | None, str | None]] = []

    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        super().emit(event_type, details, principal=principal, agent=agent)
        self.who.append((event_type, principal, agent))


pytestmark = pytest.mark.anyio

A = Principal(id="team", agent="agent-a")
B = Principal(id="team", agent="agent-b")
C = Principal(id="other", agent="agent-c")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _bus(
    tmp_path: Path, authorize: Any, counters: CallCounters | None = None
) -> tuple[Bus, Attributed]:
    backend = EmbeddedBackend(tmp_path / "bus.db")
    await backend.start()
    events = Attributed()
    bus = Bus(
        backend,
        KeyRing(b"k" * 32, None),
        events=events,
        buffer_size=100,
        authorize=authorize,
        counters=counters,
    )
    for p in (A, B, C):
        assert p.agent is not None
        await bus.register(p.agent, p.qualified)
    return bus, events


async def test_the_authorizer_is_asked_with_the_recipient_or_topic_and_its_denial_is_audited(
    tmp_path: Path,
) -> None:
    asked: list[tuple[str, str | None, Any, Any]] = []

    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        asked.append((kind, p.agent, recipient, topic))
        return Decision(False, (f"no {kind}",))

    bus, events = await _bus(tmp_path, authorize)
    with pytest.raises(PolicyDenied) as e:
        await bus.send(A, "agent-c", "x")
    assert type(e.value) is PolicyDenied and e.value.reasons == ["no bus/send"]
    with pytest.raises(PolicyDenied) as e:
        await bus.publish(A, "news.x", 1)
    assert e.value.reasons == ["no bus/publish"]
    with pytest.raises(PolicyDenied):
        await bus.subscribe(B, "news.*")
    assert asked == [
        ("bus/send", "agent-a", {"agent": "agent-c", "principal": "stdio:other"}, None),
        ("bus/publish", "agent-a", None, "news.x"),
        ("bus/subscribe", "agent-b", None, "news.*"),
    ]
    assert events.of("bus.denied") == [
        {
            "kind": "bus/send",
            "recipient": {"agent": "agent-c", "principal": "stdio:other"},
            "topic": None,
            "reasons": ["no bus/send"],
        },
        {"kind": "bus/publish", "recipient": None, "topic": "news.x", "reasons": ["no bus/publish"]},
        {"kind": "bus/subscribe", "recipient": None, "topic": "news.*", "reasons": ["no bus/subscribe"]},
    ]
    denied = [(p, a) for t, p, a in events.who if t == "bus.denied"]
    assert denied == [("team", "agent-a"), ("team", "agent-a"), ("team", "agent-b")]
    # nothing was delivered, nothing subscribed
    assert await bus.receive(C) == [] and await bus.backend.subscriptions() == {}


async def test_the_rate_limit_is_counted_per_agent_and_only_when_granted(tmp_path: Path) -> None:
    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        return Decision(True, (), {"rate_limit": 2} if p.agent == "agent-a" else {})

    counters = CallCounters()
    bus, events = await _bus(tmp_path, authorize, counters)
    for i in range(2):
        await bus.send(A, "agent-b", i)
    with pytest.raises(RateLimited) as e:
        await bus.send(A, "agent-b", "over")
    (reason,) = e.value.reasons
    assert isinstance(reason, str) and reason
    (denied,) = events.of("bus.denied")
    assert denied["kind"] == "bus/send" and denied["recipient"] == {
        "agent": "agent-b",
        "principal": "stdio:team",
    }
    assert denied["reasons"] == [reason] and denied["topic"] is None
    assert [(p, a) for t, p, a in events.who if t == "bus.denied"] == [("team", "agent-a")]
    # another agent of the same principal has its own count; without a granted limit, no limit
    for i in range(5):
        await bus.send(B, "agent-a", i)
    # the messages are counted under the agent, on the gateway's shared counters
    assert counters.tool_count("agent:agent-a", "bus") == 2
    assert counters.tool_count("agent:agent-b", "bus") == 5
    assert [r.body for r in await bus.receive(B, max_items=10)] == [0, 1]


async def test_a_send_needs_an_agent_and_a_known_recipient(tmp_path: Path) -> None:
    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        return Decision(True)

    bus, _ = await _bus(tmp_path, authorize)
    with pytest.raises(BusNoAgent):
        await bus.send(Principal(id="team"), "agent-b", "x")
    with pytest.raises(BusNoAgent):
        await bus.send(A, "agent-nobody", "x")


async def test_an_agent_id_taken_over_by_another_principal_gets_new_keys_and_entry(tmp_path: Path) -> None:
    """The same agent id under another principal (a session of another credential): its keys
    and its directory entry are made again for that principal, so peers and the policy see the
    principal that really sends."""

    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        return Decision(True)

    bus, _ = await _bus(tmp_path, authorize)
    before = bus.ring.local("agent-a")
    assert before is not None and before.principal == "stdio:team"
    taken = Principal(id="other", agent="agent-a")
    await bus.send(taken, "agent-b", "x")
    after = bus.ring.local("agent-a")
    assert after is not None and after.principal == "stdio:other" and after.sign is not before.sign
    entry = await bus.backend.lookup_keys("agent-a")
    assert entry is not None and entry.principal == "stdio:other"
    (got,) = await bus.receive(B)
    assert got.sender == "agent-a" and got.body == "x"


def subscribing_as_granted(granted: set[str]) -> Callable[..., Awaitable[Decision]]:
    """A policy under which agent-c may subscribe to the topic patterns in ``granted`` (the
    caller adds and removes them: a policy reload) and everything else is allowed."""

    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        if kind == "bus/subscribe" and p.agent == "agent-c":
            ok = any(topic.startswith(g[:-1]) for g in granted)
            return Decision(ok, () if ok else (f"may not subscribe {topic}",))
        return Decision(True)

    return authorize


async def test_a_subscription_whose_grant_is_taken_away_receives_nothing_more(tmp_path: Path) -> None:
    # Attack: the subscribe decision was made once; after the operator took the grant away (a
    # policy reload), a new subscribe was refused but the old subscription kept receiving.
    granted = {"payroll.*"}
    authorize = subscribing_as_granted(granted)
    bus, events = await _bus(tmp_path, authorize)
    await bus.subscribe(C, "payroll.*")
    await bus.publish(A, "payroll.march", {"salary": 1})
    assert [r.body for r in await bus.receive(C)] == [{"salary": 1}]  # while granted
    granted.clear()  # the grant goes
    await bus.publish(A, "payroll.april", {"salary": 2})
    assert await bus.receive(C) == []
    (denied,) = [d for d in events.of("bus.denied") if d["topic"] == "payroll.april"]
    assert denied["kind"] == "bus/subscribe" and "may not subscribe payroll.april" in denied["reasons"]


async def test_a_denied_sender_s_body_is_not_screened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy decides before the screening (up to ~0.5 s of a worker thread for a 400 KB
    body): a sender the policy denies spent that work on every refused send."""
    screened: list[Any] = []
    real = core._screen_body

    def counted(body: Any) -> Any:
        screened.append(body)
        return real(body)

    monkeypatch.setattr(core, "_screen_body", counted)

    async def authorize(kind: str, p: Principal, recipient: Any, topic: Any) -> Decision:
        return Decision(p.agent != "agent-c", ("not agent-c",))

    bus, _ = await _bus(tmp_path, authorize)
    for send in (bus.send(C, "agent-a", "x" * 1000), bus.publish(C, "news.x", "x" * 1000)):
        with pytest.raises(PolicyDenied):
            await send
    assert screened == []
    await bus.send(A, "agent-b", "hello")  # an allowed sender's is
    assert screened == ["hello"]
