"""The visibility check of every ``tools/call`` and ``tools/list`` answered from the engine's
decision cache, attacked: the repo's ``policies.rego`` on the embedded engine (real regorus),
``ResolveTool`` then ``PolicyStep`` around an endpoint that records what reached it.

A listing decision carries zero counters (volume applies to calls), so a repeated call asks
one new evaluation (its call decision) and finds its listing decision remembered (by the resolve
step, gateway.visibility.SeenTools, or in the engine's cache); these
tests check that the cache never lets one caller's answer reach another, never outlives a
policy or catalogue change, and never lets a capped principal's call through.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent, Tool

from gateway.assemble import chain_steps
from gateway.catalog import Catalog, LiveCatalog, UpstreamListing
from gateway.chain import build_chain
from gateway.context import CallContext, Principal, UpstreamInfo, VerificationStatus
from gateway.errors import PolicyDenied, UnknownTool, VerificationDenied
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputdoc import CallCounters
from gateway.policy.loader import PolicyFiles
from gateway.steps.arguments import ValidateArguments
from gateway.steps.policy import PolicyStep, afilter_listing, filter_listing
from gateway.steps.resolve import ResolveTool
from gateway.steps.results import ValidateResult
from gateway.steps.verify import VerifyTool
from tests.steps._chain import run_chain

ROOT = Path(__file__).resolve().parents[2]
UP = UpstreamInfo(name="up", transport="stdio")
ALICE = Principal(id="alice", kind="user", roles=(), source="key")  # granted up__* by the data
BOB = Principal(id="bob", kind="user", roles=(), source="key")  # granted nothing
ALICE_STDIO = Principal(id="alice", kind="user", roles=(), source="stdio")  # another namespace


def write_data(path: Path, *, alice_tools: list[str], cap: int = 0) -> None:
    data = json.loads((ROOT / "policies" / "data.json").read_text())
    keys = data["symbi_data"]["principals"]["keys"]
    keys["alice"] = {"roles": [], "tools": alice_tools, "rate_limit": 10**6, "max_calls_per_hour": cap}
    keys["bob"] = {"roles": [], "rate_limit": 10**6}
    path.write_text(json.dumps(data))


@pytest.fixture
def engine(tmp_path: Path) -> EmbeddedEngine:
    policy = tmp_path / "policies.rego"
    policy.write_text((ROOT / "policies.rego").read_text())
    write_data(tmp_path / "data.json", alice_tools=["up__*"])
    eng = EmbeddedEngine(PolicyFiles(policy=policy, data=tmp_path / "data.json"))
    assert eng.load()
    return eng


def catalog(**verification: VerificationStatus) -> LiveCatalog:
    """up__t and up__u, pinned unless ``verification`` says otherwise."""
    live = LiveCatalog({"up": UP})
    tools = [Tool(name=n, input_schema={"type": "object"}) for n in ("t", "u")]
    snap = Catalog.build([UpstreamListing(name="up", pass_through=False, tools=tools)])
    for name, entry in list(snap.tools.items()):
        status = verification.get(entry.info.original_name, "pinned")
        snap.tools[name] = replace(entry, info=replace(entry.info, verification=status))
    live.snapshot = snap
    return live


class Endpoint:
    def __init__(self) -> None:
        self.calls: list[CallContext] = []

    async def __call__(self, call: CallContext) -> Any:
        self.calls.append(call)
        return CallToolResult(content=[TextContent(type="text", text="ok")])


class Gate:
    """The gateway's chain as ``make_gateway`` builds it (resolve, verify, arguments, policy, result;
    no audit, agents or metrics), sharing one engine and one set of counters."""

    def __init__(self, engine: EmbeddedEngine, live: LiveCatalog) -> None:
        self.engine = engine
        self.live = live
        self.endpoint = Endpoint()
        steps = chain_steps(live, audit=None, policy=engine, counters=CallCounters(), metrics=None)
        assert [type(s) for s in steps] == [
            ResolveTool,
            VerifyTool,
            ValidateArguments,
            PolicyStep,
            ValidateResult,
        ]
        self.chain = build_chain(steps, self.endpoint)

    def call(self, who: Principal, target: str = "up__t") -> Any:
        ctx = CallContext(principal=who, kind="tools/call", target=target, session_id="s1")
        return run_chain(self.chain, ctx)

    def ops(self, who: Principal, target: str = "up__t") -> tuple[int, int]:
        """(cache hits, evaluations) one successful call costs."""
        hits, misses = self.engine.cache_hits, self.engine.cache_misses
        self.call(who, target)
        return self.engine.cache_hits - hits, self.engine.cache_misses - misses

    def listed(self, who: Principal) -> list[str]:
        infos = [e.info for e in self.live.snapshot.tools.values()]
        return [t.name for t in filter_listing(self.engine, who, infos, session_id="s1")]


def test_a_repeated_call_costs_one_evaluation(engine: EmbeddedEngine) -> None:
    gate = Gate(engine, catalog())
    assert gate.ops(ALICE) == (0, 2)  # first call: the listing decision and the call decision
    for _ in range(3):
        hits, evaluations = gate.ops(ALICE)
        # the listing decision is the resolve step's to remember (gateway.visibility.SeenTools):
        # the engine is asked the call's only
        assert evaluations <= 1 and hits + evaluations == 1
    assert len(gate.endpoint.calls) == 4


def test_a_repeated_listing_costs_no_evaluation_even_after_calls(engine: EmbeddedEngine) -> None:
    gate = Gate(engine, catalog())
    assert gate.listed(ALICE) == ["up__t", "up__u"]
    gate.call(ALICE)
    gate.call(ALICE, "up__u")  # the principal's counters moved: the listing's did not
    misses = engine.cache_misses
    assert gate.listed(ALICE) == ["up__t", "up__u"]
    assert engine.cache_misses == misses


def test_a_tool_hidden_from_one_principal_stays_unknown_after_another_fills_the_cache(
    engine: EmbeddedEngine,
) -> None:
    gate = Gate(engine, catalog())
    for _ in range(3):
        gate.call(ALICE)
        gate.call(ALICE, "up__u")
    assert gate.listed(ALICE) == ["up__t", "up__u"]
    for who in (BOB, ALICE_STDIO):  # another id; the same id in another namespace
        for _ in range(2):
            with pytest.raises(UnknownTool) as err:
                gate.call(who)
            assert err.value.code == "unknown_tool"
        assert gate.listed(who) == []
    assert len(gate.endpoint.calls) == 6
    with pytest.raises(UnknownTool):  # and a hidden tool answers as a tool that does not exist
        gate.call(BOB, "up__nope")


def test_a_reload_that_hides_a_tool_takes_effect_on_the_next_call(engine: EmbeddedEngine) -> None:
    gate = Gate(engine, catalog())
    gate.call(ALICE)
    gate.call(ALICE)  # both of alice's decisions are cached now
    assert engine.files.data is not None
    write_data(engine.files.data, alice_tools=["up__u"])  # a data change: up__t no longer granted
    assert engine.reload()
    with pytest.raises(UnknownTool):
        gate.call(ALICE)
    assert gate.listed(ALICE) == ["up__u"]
    gate.call(ALICE, "up__u")
    write_data(engine.files.data, alice_tools=["up__*"])  # and granting it back shows it again
    assert engine.reload()
    gate.call(ALICE)
    assert [c.target for c in gate.endpoint.calls] == ["up__t", "up__t", "up__u", "up__t"]


def test_a_catalogue_change_reaches_the_next_call(engine: EmbeddedEngine) -> None:
    """The listing probe is asked as verified (alice still resolves a drifted tool, and learns
    why it is refused), but what follows reads the catalogue's real status, never a cached
    allow of the pinned tool; bob still gets UnknownTool."""
    live = catalog()
    gate = Gate(engine, live)
    gate.call(ALICE)
    gate.call(ALICE)
    live.snapshot = catalog(t="drifted").snapshot
    with pytest.raises(VerificationDenied) as err:
        gate.call(ALICE)
    assert err.value.code == "verification_denied"
    assert gate.listed(ALICE) == ["up__u"]  # tools/list asks with the real status
    with pytest.raises(UnknownTool):
        gate.call(BOB)  # still hidden from bob, drifted or not
    assert len(gate.endpoint.calls) == 2


def test_a_principal_at_its_hourly_cap_is_refused_on_call_but_still_sees_the_tool(
    engine: EmbeddedEngine,
) -> None:
    assert engine.files.data is not None
    write_data(engine.files.data, alice_tools=["up__*"], cap=3)
    assert engine.reload()
    gate = Gate(engine, catalog())
    for _ in range(3):
        gate.call(ALICE)
    for _ in range(2):  # refused by the policy (the cap), not hidden: the reason reaches alice
        with pytest.raises(PolicyDenied) as err:
            gate.call(ALICE)
        assert err.value.code == "policy_denied" and err.value.reasons
    assert gate.listed(ALICE) == ["up__t", "up__u"]
    with pytest.raises(PolicyDenied):
        gate.call(ALICE, "up__u")  # the cap is per principal, whatever the tool
    assert len(gate.endpoint.calls) == 3


def test_an_inline_engine_is_asked_without_a_task_per_tool(engine: EmbeddedEngine) -> None:
    """regorus decides inline: a task per tool would only add work (a remote OPA's are
    awaited concurrently)."""
    infos = [e.info for e in catalog().snapshot.tools.values()]
    made: list[Any] = []

    async def go() -> list[str]:
        loop = asyncio.get_running_loop()

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
            made.append(coro)
            return asyncio.Task(coro, loop=loop, **kw)

        loop.set_task_factory(factory)
        try:
            await asyncio.gather(asyncio.sleep(0))  # the counter counts: one task
            names = [t.name for t in await afilter_listing(engine, ALICE, infos, session_id="s1")]
        finally:
            loop.set_task_factory(None)
        return names

    assert asyncio.run(go()) == ["up__t", "up__u"]
    assert len(made) == 1
