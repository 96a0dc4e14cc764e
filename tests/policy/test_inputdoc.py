"""The input document built from a CallContext carries every documented field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.context import AgentInfo, CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters, input_for_call


def make_call() -> CallContext:
    p = Principal(
        id="alice",
        kind="agent",
        roles=("developer",),
        claims={"sub": "alice", "team": "x"},
        agent="planner",
        source="key",
    )
    t = ToolInfo(
        name="fs__read_text_file",
        original_name="read_text_file",
        upstream="fs",
        definition={},
        annotations={"readOnlyHint": True},
        verification="pinned",
        key_fingerprint="sha256:ab",
        code_tool=False,
    )
    return CallContext(
        principal=p,
        kind="tools/call",
        target=t.name,
        arguments={"path": "/srv/symbi/a"},
        session_id="sess-1",
        tool=t,
        upstream=UpstreamInfo(name="fs", transport="stdio", domain="fs.example"),
        agent=AgentInfo(id="planner", name="alice/planner", state="Ready", priority=2),
    )


def test_all_fields_present() -> None:
    counters = CallCounters()
    for _ in range(3):
        counters.try_acquire("key:alice", "fs__read_text_file", None)
    doc = input_for_call(make_call(), counters)
    assert doc["principal"] == {
        "id": "alice",
        "kind": "agent",
        "roles": ["developer"],
        "claims": {"sub": "alice", "team": "x"},
        "source": "key",
        "issuer": None,
    }
    assert doc["agent"] == {
        "id": "planner",
        "name": "alice/planner",
        "state": "Ready",
        "priority": 2,
        "hosted": False,
    }
    assert doc["upstream"] == {"name": "fs", "transport": "stdio", "domain": "fs.example"}
    assert doc["tool"]["name"] == "fs__read_text_file" and doc["tool"]["original_name"] == "read_text_file"
    assert doc["tool"]["verification"] == "pinned" and doc["tool"]["key_fingerprint"] == "sha256:ab"
    assert doc["tool"]["annotations"] == {"readOnlyHint": True} and doc["tool"]["code_tool"] is False
    assert doc["arguments"] == {"path": "/srv/symbi/a"}
    ctx = doc["context"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ctx["time"])
    assert isinstance(ctx["unix"], int) and ctx["session_id"] == "sess-1"
    assert (ctx["calls_last_minute"], ctx["calls_last_hour"], ctx["tool_calls_last_minute"]) == (3, 3, 3)
    assert doc["action"] == "call" and doc["kind"] == "tools/call"


def test_hourly_count_reaches_the_policy(repo_engine: EmbeddedEngine) -> None:
    # data.json: ci-bot may make 100 calls per hour
    call = make_call()
    call = CallContext(
        principal=Principal(id="ci-bot", kind="service", source="key"),
        kind="tools/call",
        target="time__get_current_time",
        tool=ToolInfo(
            name="time__get_current_time",
            original_name="get_current_time",
            upstream="time",
            definition={},
            verification="pinned",
        ),
        upstream=UpstreamInfo(name="time", transport="stdio"),
    )
    now = [0.0]
    counters = CallCounters(clock=lambda: now[0])
    for _ in range(99):
        counters.try_acquire("key:ci-bot", "time__get_current_time", None)
        now[0] += 30  # spread over the hour so the per-minute limit is not what trips
    assert repo_engine.decide(input_for_call(call, counters)).allow is True
    counters.try_acquire("key:ci-bot", "time__get_current_time", None)
    assert repo_engine.decide(input_for_call(call, counters)).allow is False


def test_agent_record_of_another_id_is_not_used() -> None:
    call = make_call()
    call.agent = AgentInfo(id="someone-else", name="bob/x", state="Ready")
    # the runtime's record must be the principal's own agent; otherwise only the id is passed
    assert input_for_call(call)["agent"] == {
        "id": "planner",
        "name": None,
        "state": None,
        "priority": 0,
        "hosted": False,
    }


def test_the_whole_document_for_a_tool_without_upstream_info_and_no_counters() -> None:
    """Every field, exactly (mutation testing: renamed keys, default counts, the clock)."""
    from gateway.policy.inputdoc import build_input

    t = ToolInfo(
        name="fs__w",
        original_name="w",
        upstream="fs",
        definition={},
        definition_hash="sha256:h",
        code_tool=True,
        verification_mode="tofu",
        verification="pinned",
    )
    now = 1_796_000_000_123_456_789
    doc = build_input(
        principal=Principal(id="bob"),
        kind="tools/call",
        target="fs__w",
        tool=t,
        arguments={"a": 1},
        now_ns=now,
        extra={"topic": "news"},
    )
    assert doc == {
        "action": "call",
        "kind": "tools/call",
        "target": "fs__w",
        "principal": {
            "id": "bob",
            "kind": "user",
            "roles": [],
            "claims": {},
            "source": "stdio",
            "issuer": None,
        },
        "agent": None,
        "upstream": {"name": "fs", "domain": None, "transport": None},
        "tool": {
            "name": "fs__w",
            "original_name": "w",
            "upstream": "fs",
            "annotations": {},
            "verification": "pinned",
            "key_fingerprint": None,
            "definition_hash": "sha256:h",
            "code_tool": True,
            "verification_mode": "tofu",
            "screening": t.screening.as_input(),
        },
        "arguments": {"a": 1},
        "context": {
            "time": "2026-11-30T00:53:20.123Z",
            "unix": 1_796_000_000,
            "session_id": None,
            "calls_last_minute": 0,
            "calls_last_hour": 0,
            "tool_calls_last_minute": 0,
        },
        "topic": "news",
    }
    bare = build_input(principal=Principal(id="bob"), kind="resources/read", target="file:///x")
    assert bare["upstream"] == {"name": None, "domain": None, "transport": None} and bare["tool"] is None
    assert abs(bare["context"]["unix"] - __import__("time").time()) < 600  # now, when no time is given


def test_input_for_call_uses_the_calls_own_target_and_start_time() -> None:
    call = make_call()
    call.started_ns = 1_796_000_000_000_000_000
    doc = input_for_call(call)
    assert doc["target"] == call.target and doc["context"]["unix"] == 1_796_000_000


def test_counters_are_per_namespace() -> None:
    """A JWT subject and an API key principal with the same id do not share call counts."""
    counters = CallCounters()
    key = Principal(id="admin", source="key")
    token = Principal(id="admin", source="jwt", issuer="https://idp.example/")
    assert key.qualified != token.qualified
    counters.try_acquire(key.qualified, "t", None)
    assert counters.principal_counts(token.qualified) == (0, 0)
    assert counters.principal_counts(key.qualified) == (1, 1)


def test_a_listing_input_is_build_input_per_tool() -> None:
    """``listing_inputs`` shares the tool-independent parts; each document is still exactly
    what ``build_input(action="list")`` makes for that tool, and volume never reaches it."""
    from gateway.policy.inputdoc import build_input, listing_inputs

    def tool(name: str, **kw: Any) -> ToolInfo:
        up, orig = name.split("__", 1)
        return ToolInfo(name=name, original_name=orig, upstream=up, definition={}, **kw)

    tools = [tool("up__a"), tool("fs__read_file", code_tool=True, verification="pinned"), tool("zz__c")]
    ups = {
        "up": UpstreamInfo(name="up", transport="stdio", domain="d"),
        "fs": UpstreamInfo(name="fs", transport="http"),
    }
    who = Principal(id="local", kind="user", roles=("developer",), agent="a1")
    helper = AgentInfo(id="a1", name="helper", state="Ready")
    counters = CallCounters()
    for t in tools:
        assert counters.try_acquire(who.qualified, t.name, None)
    docs = list(
        listing_inputs(
            who, tools, upstreams=ups, session_id="s-9", agent=helper, now_ns=1_795_687_200_123_000_000
        )
    )
    expected = [
        build_input(
            principal=who,
            kind="tools/call",
            target=t.name,
            action="list",
            tool=t,
            upstream=ups.get(t.upstream),
            session_id="s-9",
            counters=counters,
            now_ns=1_795_687_200_123_000_000,
            agent=helper,
        )
        for t in tools
    ]
    assert docs == expected
    assert [list(d) for d in docs] == [list(e) for e in expected]  # the same field order too
    assert all(d["context"]["calls_last_hour"] == d["context"]["calls_last_minute"] == 0 for d in docs)
    assert docs[0]["arguments"] is not docs[1]["arguments"]
    assert list(listing_inputs(who, [], upstreams=ups)) == []
    # one tool (the visibility check of a tools/call asks about exactly one)
    one = list(
        listing_inputs(
            who, tools[1:2], upstreams=ups, session_id="s-9", agent=helper, now_ns=1_795_687_200_123_000_000
        )
    )
    assert one == expected[1:2]


def _iso_ms(ns: int) -> str:
    """The time field as it was written before it was remembered per second."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_the_time_is_fromtimestamps_to_the_millisecond() -> None:
    """The same text as ``datetime.fromtimestamp(ns / 1e9)`` for every kind of instant: the
    float's microseconds rounded half to even with a carry into the next second (x.9999995 s),
    negative times, and a second asked again after another (the remembered second is checked)."""
    import random

    from gateway.policy.inputdoc import _rfc3339

    rng = random.Random(16)
    low = (0, 1, 499_999, 500_000, 500_001, 1_500, 2_500)
    fracs = (*low, 999_499_999, 999_999_499, 999_999_500, 999_999_999)
    seconds = [0, -1, 1, 1_796_000_000, 4_102_444_799, -2_208_988_800]
    seconds += [rng.randrange(-(10**10), 10**10) for _ in range(300)]
    instants = [s * 10**9 + f for s in seconds for f in (*fracs, rng.randrange(10**9))]
    for ns in instants + instants[::-1]:  # each second after another one
        assert _rfc3339(ns) == _iso_ms(ns), ns
    assert _rfc3339(1_796_000_000_999_999_999) == "2026-11-30T00:53:21.000Z"  # rounded into the next second


def _tool(**kw: Any) -> ToolInfo:
    base: dict[str, Any] = {"name": "fs__w", "original_name": "w", "upstream": "fs", "definition": {}}
    return ToolInfo(**{**base, **kw})


def test_an_entrys_documents_are_built_once_and_follow_a_new_entry() -> None:
    """The tool's and upstream's documents are remembered per catalogue entry (the objects);
    a drifted, re-verified or re-screened tool and another upstream document are new entries,
    seen by the very next input (a memo by name, or by the tool alone, fails here)."""
    from dataclasses import replace

    from gateway.policy.inputdoc import build_input, tool_input, upstream_input
    from gateway.screen.screener import Finding, Screening

    who = Principal(id="bob")
    up = UpstreamInfo(name="fs", transport="stdio", domain="a.example")
    tool = _tool(annotations={"readOnlyHint": True}, verification="pinned", definition_hash="sha256:1")

    def doc(t: ToolInfo, u: UpstreamInfo | None) -> dict[str, Any]:
        return build_input(principal=who, kind="tools/call", target=t.name, tool=t, upstream=u)

    first, again = doc(tool, up), doc(tool, up)
    assert first["tool"] == tool_input(tool) and first["upstream"] == upstream_input(up, "fs")
    assert again["tool"] is first["tool"] and again["upstream"] is first["upstream"]  # remembered
    drifted = replace(tool, verification="drifted", definition_hash="sha256:2")
    assert doc(drifted, up)["tool"] == tool_input(drifted)
    assert doc(drifted, up)["tool"]["verification"] == "drifted"
    finding = Finding("hidden-text", "poisoning", "high", "description", (0, 1), "x", "hidden text")
    flagged = replace(tool, screening=Screening(findings=(finding,)))
    assert doc(flagged, up)["tool"]["screening"]["highest"] == "high"
    moved = UpstreamInfo(name="fs", transport="http", domain="b.example")
    assert doc(tool, moved)["upstream"] == {"name": "fs", "transport": "http", "domain": "b.example"}
    assert doc(tool, None)["upstream"] == {"name": "fs", "domain": None, "transport": None}
    assert doc(tool, up)["tool"]["verification"] == "pinned"  # the first entry's are still its own


def test_the_entry_memo_is_bounded(monkeypatch: Any) -> None:
    from gateway.policy import inputdoc

    monkeypatch.setattr(inputdoc, "ENTRY_DOCS", 2)
    monkeypatch.setattr(inputdoc, "_entry_docs", {})
    tools = [_tool(name=f"fs__t{i}") for i in range(5)]
    for t in tools:
        assert inputdoc.entry_input(t, None)[1]["name"] == t.name
        assert len(inputdoc._entry_docs) <= 2
    assert inputdoc.entry_input(tools[0], None)[1] == inputdoc.tool_input(tools[0])


def test_the_callers_documents_are_kept_and_follow_every_agent_change(tmp_path: Path) -> None:
    """The principal's and agent's documents are built once for the calls of a session and
    follow each change of the agent the runtime reports: a suspended agent is denied on its
    very next decision (a memo by principal alone, or an ``Agent.info`` that hands out its
    first AgentInfo, allows it here)."""
    from gateway.policy.inputdoc import build_input
    from gateway.runtime import AgentState
    from gateway.runtime.agents import AgentRegistry
    from tests.policy.test_engine import PKG, engine_for
    from tests.runtime.test_core import Recorder

    engine = engine_for(
        tmp_path,
        PKG
        + 'decision := {"allow": input.agent.state in {"Ready", "Running"}, "reasons": [], "conditions": {}}\n',
    )
    registry = AgentRegistry(Recorder())
    alice = Principal(id="alice", roles=("developer",))
    agent = registry.for_session(alice, "client", "stdio")
    who = Principal(id="alice", roles=("developer",), agent=agent.id)

    def doc() -> dict[str, Any]:
        return build_input(principal=who, kind="tools/call", target="fs__read", agent=registry.info(agent.id))

    first, again = doc(), doc()
    assert again["principal"] is first["principal"] and again["agent"] is first["agent"]  # kept
    assert first["agent"] == {
        "id": agent.id,
        "name": agent.name,
        "state": "Ready",
        "priority": 4,
        "hosted": False,
    }
    assert engine.decide(first).allow
    registry.transition(agent, AgentState.RUNNING, "task assigned")
    assert doc()["agent"]["state"] == "Running" and engine.decide(doc()).allow
    registry.transition(agent, AgentState.SUSPENDED, "policy violation")
    assert doc()["agent"]["state"] == "Suspended"
    assert not engine.decide(doc()).allow
    agent.priority = 9  # any field: a new document
    assert doc()["agent"]["priority"] == 9
    assert doc()["principal"] == first["principal"]


def test_a_principals_claims_edited_in_place_reach_the_next_input() -> None:
    """Claims are a mapping that can be edited under a frozen Principal: an empty one is
    checked on every use, a principal with claims (or roles in a list) built per input."""
    from gateway.policy.inputdoc import build_input

    claims: dict[str, Any] = {}
    p = Principal(id="bob", claims=claims)
    listed = Principal(id="carol", roles=["reader"])  # type: ignore[arg-type]

    def doc(who: Principal) -> dict[str, Any]:
        return build_input(principal=who, kind="tools/call", target="fs__read")

    assert doc(p)["principal"]["claims"] == {}
    claims["team"] = "red"
    assert doc(p)["principal"]["claims"] == {"team": "red"}
    claims["team"] = "blue"
    assert doc(p)["principal"]["claims"] == {"team": "blue"}
    del claims["team"]
    assert doc(p)["principal"]["claims"] == {}
    assert doc(listed)["principal"]["roles"] == ["reader"]
    listed.roles.append("admin")  # type: ignore[attr-defined]
    assert doc(listed)["principal"]["roles"] == ["reader", "admin"]


def test_the_party_memo_is_bounded(monkeypatch: Any) -> None:
    from gateway.policy import inputdoc

    monkeypatch.setattr(inputdoc, "PARTY_DOCS", 2)
    monkeypatch.setattr(inputdoc, "_parties", {})
    monkeypatch.setattr(inputdoc, "_last_parties", None)
    people = [Principal(id=f"p{i}") for i in range(5)]
    for p in people:
        assert inputdoc.build_input(principal=p, kind="tools/call", target="t")["principal"]["id"] == p.id
        assert len(inputdoc._parties) <= 2
    assert inputdoc.build_input(principal=people[0], kind="tools/call", target="t")["principal"]["id"] == "p0"
