"""Listings filtered by the policy (gateway/visibility.py), with a real Rego policy in the
embedded engine: a caller is shown only what the policy lets it use (action "list"), and
everything when the config turns the policy off."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import types

from gateway.catalog import Catalog, CatalogTool, LiveCatalog, UpstreamListing
from gateway.context import AgentInfo, CallContext, Principal, ToolInfo, UpstreamInfo
from gateway.errors import UnknownTool
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import listing_inputs
from gateway.policy.inputkey import ALL, InputReads, Trie
from gateway.policy.loader import PolicyFiles, load_checked
from gateway.policy.remote import RemoteEngine
from gateway.runtime.agents import AgentRegistry
from gateway.steps.resolve import ResolveTool
from gateway.visibility import UNKEYED_CONTEXT, SeenTools, Visibility, rememberable
from tests.runtime.test_core import Recorder

pytestmark = pytest.mark.anyio

_POLICY = (
    "package symbi\nimport rego.v1\n\n"
    'default decision := {"allow": false, "reasons": ["not listed"], "conditions": {}}\n\n'
    'decision := {"allow": true, "reasons": [], "conditions": {}} if {\n'
    '    input.action == "list"\n'
    '    not contains(input.target, "secret")\n'
    '    input.principal.id == "alice"\n'
    "}\n"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _engine(tmp_path: Path) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(_POLICY)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    return eng


def _tool(name: str) -> CatalogTool:
    info = ToolInfo(name=f"fs__{name}", original_name=name, upstream="fs", definition={"name": name})
    return CatalogTool(info=info, tool=types.Tool(name=f"fs__{name}", input_schema={"type": "object"}))


def _visibility(policy: EmbeddedEngine | None) -> Visibility:
    return Visibility(
        policy, AgentRegistry(Recorder()), lambda name: UpstreamInfo(name=name, transport="stdio")
    )


async def test_a_listing_shows_only_the_tools_the_policy_lets_the_caller_see(tmp_path: Path) -> None:
    vis = _visibility(_engine(tmp_path))
    tools = [_tool("read"), _tool("secret_dump"), _tool("write")]
    shown = await vis.among(Principal(id="alice"), tools)
    assert [t.info.name for t in shown] == ["fs__read", "fs__write"]
    assert await vis.among(Principal(id="mallory"), tools) == []


async def test_resources_and_prompts_are_filtered_by_the_same_rule(tmp_path: Path) -> None:
    vis = _visibility(_engine(tmp_path))
    pairs = [("file:///notes", "fs"), ("file:///secret", "fs")]
    assert await vis.targets(Principal(id="alice"), "resources/read", pairs) == {"file:///notes"}
    assert await vis.targets(Principal(id="mallory"), "prompts/get", pairs) == set()


async def test_with_the_policy_off_everything_is_shown() -> None:
    vis = _visibility(None)
    tools = [_tool("read"), _tool("secret_dump")]
    assert await vis.among(Principal(id="anyone"), tools) == tools
    pairs = [("file:///secret", "fs")]
    assert await vis.targets(Principal(id="anyone"), "resources/read", pairs) == {"file:///secret"}


# --- the visibility check of each tools/call remembered (SeenTools, used by ResolveTool) -------

_SEEING = (
    "package symbi\nimport rego.v1\n\n"
    'default decision := {"allow": false, "reasons": ["hidden"], "conditions": {}}\n\n'
    'decision := {"allow": true, "reasons": [], "conditions": {}} if {\n'
    '    input.action == "list"\n'
    '    input.principal.id == "alice"\n'
    '    input.principal.kind == "user"\n'
    '    input.principal.source == "key"\n'
    "    input.principal.issuer == null\n"
    '    "dev" in input.principal.roles\n'
    "    input.principal.claims.tier == 1\n"
    '    input.agent.state == "Ready"\n'
    "    input.agent.priority == 1\n"
    '    input.context.session_id == "s1"\n'
    "    input.tool.annotations.readOnlyHint == true\n"
    "}\n"
)
ALICE = Principal(id="alice", kind="user", roles=("dev",), claims={"tier": 1}, agent="a1", source="key")
AGENT = AgentInfo(id="a1", name="helper", state="Ready", priority=1)


def _seeing(tmp_path: Path, rego: str = _SEEING) -> EmbeddedEngine:
    (tmp_path / "seeing.rego").write_text(rego)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "seeing.rego"))
    assert eng.load()
    return eng


def _live(read_only: bool = True) -> LiveCatalog:
    live = LiveCatalog({"up": UpstreamInfo(name="up", transport="stdio")})
    tool = types.Tool(
        name="t", input_schema={"type": "object"}, annotations=types.ToolAnnotations(read_only_hint=read_only)
    )
    live.snapshot = Catalog.build([UpstreamListing(name="up", pass_through=False, tools=[tool])])
    return live


async def _sees(step: ResolveTool, who: Principal = ALICE, agent: Any = AGENT, session: str = "s1") -> bool:
    """Whether the step resolves up__t for this caller (a hidden tool is an unknown one)."""

    async def reached(call: CallContext) -> Any:
        return call.tool

    call = CallContext(principal=who, kind="tools/call", target="up__t", session_id=session, agent=agent)
    try:
        await step(call, reached)
    except UnknownTool:
        return False
    return True


def _asked(engine: EmbeddedEngine) -> int:
    return engine.cache_hits + engine.cache_misses


async def test_a_caller_asking_again_about_the_same_tool_is_answered_without_the_engine(
    tmp_path: Path,
) -> None:
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    assert await _sees(step) and _asked(engine) == 1
    for _ in range(3):
        assert await _sees(step)
    assert _asked(engine) == 1


async def test_every_part_of_the_listing_input_is_in_the_key(tmp_path: Path) -> None:
    """Attack: a caller differing from one that was let see the tool in one part of the listing
    input the policy reads (principal, roles, claims, agent, session) was let see it too."""
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    assert await _sees(step)
    others: list[tuple[Principal, Any, str]] = [
        (replace(ALICE, id="bob"), AGENT, "s1"),
        (replace(ALICE, kind="service"), AGENT, "s1"),
        (replace(ALICE, source="jwt"), AGENT, "s1"),
        (replace(ALICE, issuer="https://idp"), AGENT, "s1"),
        (replace(ALICE, roles=()), AGENT, "s1"),  # roles taken away: a new principal, same id
        (replace(ALICE, roles=("viewer",)), AGENT, "s1"),
        (replace(ALICE, claims={"tier": True}), AGENT, "s1"),  # equal in Python, not in Rego
        (replace(ALICE, claims={"tier": 2}), AGENT, "s1"),
        (replace(ALICE, claims={}), AGENT, "s1"),
        (replace(ALICE, claims={"tear": 1}), AGENT, "s1"),
        (replace(ALICE, agent="a2"), AGENT, "s1"),  # the agent is not the principal's: id only
        (ALICE, replace(AGENT, state="Suspended"), "s1"),
        (ALICE, replace(AGENT, priority=True), "s1"),  # equal in Python, not in Rego
        (ALICE, None, "s1"),
        (ALICE, AGENT, "s2"),  # another session
    ]
    for who, agent, session in others:
        for _ in range(2):
            assert not await _sees(step, who, agent, session), (who, agent, session)
        assert await _sees(step)  # the remembered answer stays its own caller's


async def test_claims_edited_in_place_are_not_the_claims_remembered(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    claims: dict[str, Any] = {"tier": 1}
    who = replace(ALICE, claims=claims)
    assert await _sees(step, who)
    claims["tier"] = 2
    assert not await _sees(step, who)


async def test_a_reload_hides_a_remembered_tool_at_the_next_call(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    assert await _sees(step) and await _sees(step)
    (tmp_path / "seeing.rego").write_text(_SEEING.replace('"s1"', '"s9"'))
    assert engine.reload()
    assert not await _sees(step)
    (tmp_path / "seeing.rego").write_text(_SEEING)
    assert engine.reload()
    assert await _sees(step)


async def test_a_policy_adopted_from_another_replica_hides_a_remembered_tool(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    assert await _sees(step) and await _sees(step)
    (tmp_path / "other.rego").write_text(_SEEING.replace('"dev" in', '"ops" in'))
    bundle = load_checked(PolicyFiles(policy=tmp_path / "other.rego"), engine.decision_path)
    with engine.reload_lock:
        engine.adopt(bundle, version=2, publisher="replica-b")
    assert not await _sees(step)


async def test_a_catalogue_change_hides_a_remembered_tool_at_the_next_call(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    live = _live()
    step = ResolveTool(live, engine)
    assert await _sees(step) and await _sees(step)
    live.snapshot = _live(read_only=False).snapshot  # the upstream's tool no longer read-only
    assert not await _sees(step)
    live.snapshot = _live().snapshot
    assert await _sees(step)
    live.snapshot = Catalog.build([UpstreamListing(name="up", pass_through=False, tools=[])])
    assert not await _sees(step)  # gone from the catalogue: unknown


async def test_a_refusal_is_asked_again_every_time(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    step = ResolveTool(_live(), engine)
    for n in range(1, 4):
        assert not await _sees(step, session="s2")
        assert _asked(engine) == n  # (the engine's own cache answers it: asked, not evaluated)


@pytest.mark.parametrize(
    "reads_time",
    [
        "input.context.time != null",
        "input.context.unix > 0",
        "count(input.context) > 0",  # all of the context
        "count(input) > 0",  # all of the input
        "time.now_ns() > 0",  # a volatile builtin: nothing of this policy is cached
    ],
)
async def test_a_policy_that_can_read_the_time_is_asked_every_time(tmp_path: Path, reads_time: str) -> None:
    rego = _SEEING.replace('    input.action == "list"\n', f'    input.action == "list"\n    {reads_time}\n')
    engine = _seeing(tmp_path, rego)
    assert rememberable(engine.bundle.reads if engine.bundle else None) is False
    step = ResolveTool(_live(), engine)
    for n in range(1, 4):
        assert await _sees(step)
        assert _asked(engine) == n


def test_what_a_policy_reads_decides_whether_its_answers_are_remembered(tmp_path: Path) -> None:
    engine = _seeing(tmp_path)
    assert engine.bundle is not None and rememberable(engine.bundle.reads)
    assert rememberable(InputReads({"context": {"session_id": {ALL: {}}}, "tool": {ALL: {}}}))
    volatile: list[Trie] = [
        {ALL: {}},
        {"context": {ALL: {}}},
        {"context": {"time": {ALL: {}}}},
        {"context": {"unix": {}}},
    ]
    for trie in volatile:
        assert not rememberable(InputReads(trie)), trie
    assert not rememberable(None)


async def test_nothing_is_remembered_without_the_engines_cache_or_with_a_remote_engine(
    tmp_path: Path,
) -> None:
    engine = _seeing(tmp_path)
    engine.cache_entries = 0
    step = ResolveTool(_live(), engine)
    for n in range(1, 3):
        assert await _sees(step)
        assert engine.cache_misses == n
    remote = RemoteEngine("http://127.0.0.1:9")
    call = CallContext(principal=ALICE, kind="tools/call", target="up__t", session_id="s1", agent=AGENT)
    assert SeenTools(remote).recall(call, _live().snapshot.tools["up__t"].info) == (False, None)
    assert SeenTools(None).recall(call, _live().snapshot.tools["up__t"].info) == (False, None)


async def test_the_callers_remembered_are_bounded(tmp_path: Path) -> None:
    engine = _seeing(tmp_path, _SEEING.replace('    input.context.session_id == "s1"\n', ""))
    live = _live()
    seen = SeenTools(engine, entries=2)
    info = live.snapshot.tools["up__t"].info

    def call(session: str) -> CallContext:
        return CallContext(
            principal=ALICE, kind="tools/call", target="up__t", session_id=session, agent=AGENT
        )

    for session in ("s1", "s2"):
        hit, token = seen.recall(call(session), info)
        assert not hit and token is not None
        seen.keep(token)
    assert seen.recall(call("s1"), info) == (True, None) and seen.recall(call("s2"), info) == (True, None)
    hit, token = seen.recall(call("s3"), info)
    assert token is not None
    seen.keep(token)  # full: emptied, then this one kept
    assert seen.recall(call("s3"), info) == (True, None)
    assert seen.recall(call("s1"), info)[0] is False


def test_the_listing_input_has_no_part_out_of_the_key_but_the_time() -> None:
    """SeenTools keys the listing input on everything it holds but the time; a new field here
    must be added to that key (or to UNKEYED_CONTEXT) before this test is updated."""
    tool = _live().snapshot.tools["up__t"].info
    (doc,) = listing_inputs(ALICE, (tool,), session_id="s1", agent=AGENT)
    assert set(doc) == {
        "action",
        "kind",
        "target",
        "principal",
        "agent",
        "upstream",
        "tool",
        "arguments",
        "context",
    }
    assert doc["arguments"] == {} and doc["upstream"] == {"name": "up", "domain": None, "transport": None}
    assert set(doc["principal"]) == {"id", "kind", "roles", "claims", "source", "issuer"}
    assert set(doc["context"]) - set(UNKEYED_CONTEXT) == {
        "session_id",
        "calls_last_minute",
        "calls_last_hour",
        "tool_calls_last_minute",
    }
    assert [
        doc["context"][c] for c in ("calls_last_minute", "calls_last_hour", "tool_calls_last_minute")
    ] == [0, 0, 0]


async def test_an_answer_given_under_a_policy_since_replaced_is_not_remembered(tmp_path: Path) -> None:
    """Attack: the policy was reloaded while a caller's question was being answered: the answer
    the old policy gave, kept after the new policy was seen, was remembered as the new one's."""
    engine = _seeing(tmp_path)
    seen = SeenTools(engine)
    info = _live().snapshot.tools["up__t"].info
    call = CallContext(principal=ALICE, kind="tools/call", target="up__t", session_id="s1", agent=AGENT)
    _, asked = seen.recall(call, info)  # asked under the first policy
    assert asked is not None
    (tmp_path / "seeing.rego").write_text(_SEEING.replace('"s1"', '"s9"'))
    assert engine.reload()
    other = CallContext(principal=ALICE, kind="tools/call", target="up__t", session_id="s2", agent=AGENT)
    assert seen.recall(other, info)[0] is False  # another caller meets the new policy first
    seen.keep(asked)  # the first policy's allow, kept late
    assert seen.recall(call, info)[0] is False
