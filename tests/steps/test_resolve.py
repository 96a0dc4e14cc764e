"""ResolveTool's visibility probe, attacked: a real embedded engine (regorus) with a policy that
lists a tool by what its definition says, a live catalogue rebuilt under the step.

The step keeps, per catalogue entry, the tool as it is asked about for visibility (the entry
as if verified and screened clean); these tests check that a rebuilt, drifted or replaced
entry is never asked about as the entry it replaced.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp.types import Tool, ToolAnnotations

from gateway.catalog import Catalog, LiveCatalog, UpstreamListing
from gateway.context import CallContext, Principal, ToolInfo, UpstreamInfo, VerificationStatus
from gateway.errors import UnknownTool
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import PolicyFiles
from gateway.screen.screener import Finding, Screening
from gateway.steps.resolve import ResolveTool

# listed (and called) only when its definition says read-only and it is asked about as verified
# and screened clean; calls are the chain's later steps' business (not here)
REGO = """package symbi

import rego.v1

default decision := {"allow": false, "reasons": ["no"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if {
    input.action == "list"
    input.tool.annotations.readOnlyHint == true
    input.tool.verification == "verified"
    count(input.tool.screening.findings) == 0
}
"""
WHO = Principal(id="alice", source="key")
FINDING = Finding(
    rule="x", category="injection", severity="high", field="description", span=(0, 1), excerpt="", summary=""
)


@pytest.fixture
def engine(tmp_path: Path) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(REGO)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    return eng


def listing(read_only: bool, verification: VerificationStatus = "drifted") -> Catalog:
    tool = Tool(
        name="t", input_schema={"type": "object"}, annotations=ToolAnnotations(read_only_hint=read_only)
    )
    snap = Catalog.build([UpstreamListing(name="up", pass_through=False, tools=[tool])])
    for name, entry in list(snap.tools.items()):
        info = replace(
            entry.info,
            verification=verification,
            screening=Screening(findings=(FINDING,)),
        )
        snap.tools[name] = replace(entry, info=info)
    return snap


async def resolve(step: ResolveTool) -> ToolInfo:
    async def inner(call: CallContext) -> Any:
        return call.tool

    info: ToolInfo = await step(
        CallContext(principal=WHO, kind="tools/call", target="up__t", session_id="s1"), inner
    )
    return info


def test_a_rebuilt_entry_is_asked_about_as_itself(engine: EmbeddedEngine) -> None:
    live = LiveCatalog({"up": UpstreamInfo(name="up", transport="stdio")})
    live.snapshot = listing(read_only=True)
    step = ResolveTool(live, engine)
    first = asyncio.run(resolve(step))
    # the step found the entry as it is (drifted, flagged); visibility asked as if approved and clean
    assert first.verification == "drifted" and first.screening.findings
    assert asyncio.run(resolve(step)) is first  # the same entry, the same answer
    live.snapshot = listing(read_only=False)  # the upstream changed the tool: no longer read-only
    with pytest.raises(UnknownTool):
        asyncio.run(resolve(step))
    live.snapshot = listing(read_only=True)
    assert asyncio.run(resolve(step)).annotations == {"readOnlyHint": True}


def test_the_probe_is_the_entry_as_verified_and_clean_and_made_once_per_entry(engine: EmbeddedEngine) -> None:
    step = ResolveTool(LiveCatalog({}), engine)
    info = listing(read_only=True).tools["up__t"].info
    probe = step._probe(info)
    assert probe == replace(info, verification="verified", screening=Screening())
    assert step._probe(info) is probe
    other = replace(info, definition_hash="sha256:other")  # an equal-looking, distinct entry
    assert step._probe(other) is not probe and step._probe(other).definition_hash == "sha256:other"


def test_the_probes_kept_are_bounded(engine: EmbeddedEngine) -> None:
    step = ResolveTool(LiveCatalog({}), engine)
    info = listing(read_only=True).tools["up__t"].info
    kept = [replace(info, definition_hash=str(i)) for i in range(4100)]  # alive: ids never reused
    most = 0
    for i in kept:
        step._probe(i)
        most = max(most, len(step._probes))
    assert most == 4096 and len(step._probes) == 4100 - 4096  # emptied when full, then refilled
    assert step._probe(kept[-1]).definition_hash == "4099"
