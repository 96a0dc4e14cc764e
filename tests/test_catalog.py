"""The catalogue: valid names, no shadowing, routing of resources and prompts."""

from __future__ import annotations

import dataclasses

import mcp.types as types
import pytest

from gateway.catalog import Catalog, UpstreamListing, namespaced
from gateway.context import ToolInfo
from gateway.errors import CatalogError, HeldForApproval, UnknownTool
from gateway.verify.listed import listed_infos


def tool(name: str, desc: str = "d") -> types.Tool:
    return types.Tool(name=name, description=desc, input_schema={"type": "object"})


def test_tools_are_namespaced_and_valid() -> None:
    cat = Catalog.build([UpstreamListing("ev", False, [tool("echo"), tool("get.sum")])])
    assert set(cat.tools) == {"ev__echo", "ev__get_sum"}
    assert cat.tool("ev__get_sum").info.original_name == "get.sum"


def test_a_name_that_cannot_be_made_valid_is_refused() -> None:
    cat = Catalog.build([UpstreamListing("ev", False, [tool("x" * 80), tool("ok")])])
    assert set(cat.tools) == {"ev__ok"}
    assert [r.name for r in cat.refusals] == ["x" * 80]
    with pytest.raises(CatalogError):
        namespaced("ev", "y" * 70, False)


def test_colliding_names_shadow_nothing() -> None:
    # "a.b" and "a_b" both become ev__a_b: neither may be reachable (fail closed).
    cat = Catalog.build(
        [UpstreamListing("ev", False, [tool("a.b", "first"), tool("a_b", "second"), tool("c")])]
    )
    assert set(cat.tools) == {"ev__c"}
    with pytest.raises(UnknownTool):
        cat.tool("ev__a_b")


def test_pass_through_keeps_names() -> None:
    cat = Catalog.build([UpstreamListing("ev", True, [tool("test_simple_text")])])
    assert set(cat.tools) == {"test_simple_text"}


def test_resources_route_to_their_upstream_and_duplicates_are_refused() -> None:
    r1 = types.Resource(uri="file:///a", name="a")
    r2 = types.Resource(uri="file:///shared", name="s")
    tpl = types.ResourceTemplate(uri_template="demo://item/{id}", name="item")
    cat = Catalog.build(
        [
            UpstreamListing("one", False, [], resources=[r1, r2]),
            UpstreamListing("two", False, [], resources=[r2], templates=[tpl]),
        ]
    )
    assert cat.resource_owner("file:///a") == "one"
    assert cat.resource_owner("demo://item/42") == "two"
    with pytest.raises(CatalogError):
        cat.resource_owner("file:///shared")
    with pytest.raises(CatalogError):
        cat.resource_owner("file:///unknown")


def test_prompts_are_namespaced() -> None:
    cat = Catalog.build([UpstreamListing("ev", False, [], prompts=[types.Prompt(name="simple")])])
    assert cat.prompt("ev__simple").original_name == "simple"


def test_an_unlisted_uri_is_subscribed_at_the_pass_through_upstream_only() -> None:
    res = types.Resource(uri="test://listed", name="listed")
    passing = Catalog.build(
        [UpstreamListing("ev", True, [], resources=[res]), UpstreamListing("bus", False, [])]
    )
    assert passing.subscription_owner("test://watched-resource") == "ev"
    assert passing.subscription_owner("test://listed") == "ev"
    with pytest.raises(CatalogError):  # reads still need a listed resource or template
        passing.resource_owner("test://watched-resource")
    namespacing = Catalog.build([UpstreamListing("ev", False, [], resources=[res])])
    with pytest.raises(CatalogError):  # several upstreams: no owner is guessed
        namespacing.subscription_owner("test://watched-resource")


@pytest.mark.parametrize(
    "bad",
    ["", " ", "has space", "evil\u202etxt.exe", "zero\u200bwidth", "tab\there", "x" * 300, "a.b"],
)
def test_pass_through_names_are_validated(bad: str) -> None:
    """Attack: a pass-through upstream lists names a client shows misleadingly (or chokes on)."""
    cat = Catalog.build([UpstreamListing("ev", True, [tool(bad), tool("fine")])])
    assert set(cat.tools) == {"fine"}
    assert [r.name for r in cat.refusals] == [bad]


@pytest.mark.parametrize("bad", ["", " ", "evil\u202etxt", "nul\x00", "line\u2028sep"])
def test_namespaced_names_refuse_empty_and_invisible_characters(bad: str) -> None:
    """Attack: an empty tool name became ``evil__``; a U+202E name became a plausible one."""
    cat = Catalog.build([UpstreamListing("evil", False, [tool(bad), tool("ok")])])
    assert set(cat.tools) == {"evil__ok"}
    with pytest.raises(CatalogError):
        namespaced("evil", bad, False)


@pytest.mark.parametrize("prefix", ["sandbox", "bus", "memory", "knowledge", "agents", "symbi", "SANDBOX"])
def test_pass_through_cannot_take_or_knock_out_a_builtin_prefix(prefix: str) -> None:
    """Attack: a pass-through tool named like a built-in collides with it (both dropped)."""
    builtin = UpstreamListing("sandbox", False, [tool("run_python")])
    evil = UpstreamListing("ev", True, [tool(f"{prefix}__run_python")])
    cat = Catalog.build([evil, builtin])
    assert "sandbox__run_python" in cat.tools
    assert cat.tools["sandbox__run_python"].info.upstream == "sandbox"
    assert [r.upstream for r in cat.refusals] == ["ev"]


def _assessed(listings: list[UpstreamListing], previous: Catalog | None = None, **verdicts: str) -> Catalog:
    """A rebuild as the gateway does it: fresh infos, a verdict each, the catalogue."""
    import dataclasses

    infos = {
        i.name: dataclasses.replace(i, verification=verdicts.get(i.name, "verified"))  # type: ignore[arg-type]
        for i in Catalog.fresh_infos(listings, previous)
    }
    if previous is not None:  # unchanged verdicts are the previous objects (the verifier keeps them)
        for name, info in list(infos.items()):
            old = previous.tools.get(name)
            if (
                old is not None
                and old.info.definition is info.definition
                and old.info.verification == info.verification
            ):
                infos[name] = old.info
    return Catalog.build(listings, infos=infos, previous=previous)


def _wire(cat: Catalog) -> dict[str, object]:
    return {n: (e.tool.model_dump(by_alias=True, mode="json"), e.info) for n, e in cat.tools.items()}


def test_a_rebuild_reuses_what_its_upstream_did_not_relist_and_remakes_the_rest() -> None:
    a, b = [tool("echo"), tool("sum")], [tool("now")]
    old = _assessed([UpstreamListing("a", False, a), UpstreamListing("b", False, b)])
    relisted = [tool("now", "changed"), tool("later")]  # b re-listed: new objects, one new tool
    new = _assessed([UpstreamListing("a", False, a), UpstreamListing("b", False, relisted)], old)
    assert new.tools["a__echo"] is old.tools["a__echo"] and new.tools["a__sum"] is old.tools["a__sum"]
    assert new.tools["b__now"] is not old.tools["b__now"]
    assert new.tools["b__now"].info.definition["description"] == "changed"
    assert new.tools["b__now"].tool.description == "changed"
    # the same catalogue as one built from nothing
    scratch = _assessed([UpstreamListing("a", False, a), UpstreamListing("b", False, relisted)])
    assert _wire(new) == _wire(scratch)


def test_a_new_verdict_on_an_unchanged_listing_is_not_hidden_by_reuse() -> None:
    a = [tool("echo")]
    old = _assessed([UpstreamListing("a", False, a)])
    revoked = _assessed([UpstreamListing("a", False, a)], old, a__echo="unverified")
    entry = revoked.tools["a__echo"]
    assert entry is not old.tools["a__echo"]
    assert entry.info.verification == "unverified"
    assert entry.tool.meta is not None and entry.tool.meta["symbi/verification"]["status"] == "unverified"


def test_a_rebuild_still_refuses_a_collision_with_a_reused_tool() -> None:
    a = [tool("x_y")]
    old = _assessed([UpstreamListing("a", False, a)])
    # a second listing from the same upstream adds a tool whose name collides with the kept one
    new = _assessed([UpstreamListing("a", False, [*a, tool("x.y")])], old)
    assert "a__x_y" not in new.tools and [r.name for r in new.refusals] == ["x.y"]


def _verdict(info: ToolInfo, status: str, mode: str = "tofu") -> ToolInfo:
    return dataclasses.replace(info, verification=status, verification_mode=mode)  # type: ignore[arg-type]


def test_prompts_resources_and_templates_without_an_admitting_verdict_are_held() -> None:
    """A held item is not served, its lookup says why (held_for_approval), and a held URI is not
    handed to another upstream's template that matches it; no verdict at all is no admission."""
    kept = types.Prompt(name="kept")
    redefined = types.Prompt(name="redefined", description="now with an injection")
    late = types.Resource(uri="docs://late", name="late")
    tpl = types.ResourceTemplate(uri_template="files://{path}", name="files")
    catch_all = types.ResourceTemplate(uri_template="docs://{name}", name="docs")
    listings = [
        UpstreamListing("ev", False, [], prompts=[kept, redefined], resources=[late], templates=[tpl]),
        UpstreamListing("other", False, [], templates=[catch_all]),
    ]
    infos = {i.name: i for i in listed_infos(listings)}
    verdicts = {
        "prompt:ev__kept": _verdict(infos["prompt:ev__kept"], "pinned"),
        "prompt:ev__redefined": _verdict(infos["prompt:ev__redefined"], "drifted"),
        "template:ev__files://{path}": _verdict(infos["template:ev__files://{path}"], "unverified"),
        "template:other__docs://{name}": _verdict(infos["template:other__docs://{name}"], "pinned"),
        # resource:ev__docs://late: no verdict
    }
    cat = Catalog.build(listings, listed=verdicts)
    assert set(cat.prompts) == {"ev__kept"}
    assert cat.resources == {}
    assert [t.uri_template for _, t, _ in cat.templates] == ["docs://{name}"]
    with pytest.raises(HeldForApproval):
        cat.prompt("ev__redefined")
    with pytest.raises(HeldForApproval):
        cat.resource_owner("docs://late")  # not served by other's docs://{name} either
    with pytest.raises(HeldForApproval):
        cat.template_owner("files://{path}")
    assert cat.resource_owner("docs://readme") == "other"
    # under warn a drifted or unverified one is served (marked, as tools are)
    warned = {n: _verdict(i, "drifted", "warn") for n, i in infos.items()}
    assert set(Catalog.build(listings, listed=warned).prompts) == {"ev__kept", "ev__redefined"}


def test_a_held_resource_is_not_subscribed_at_the_pass_through_upstream() -> None:
    res = types.Resource(uri="test://late", name="late")
    listing = UpstreamListing("ev", True, [], resources=[res])
    (info,) = listed_infos([listing])
    cat = Catalog.build([listing], listed={info.name: _verdict(info, "unverified")})
    assert cat.subscription_owner("test://unlisted") == "ev"
    with pytest.raises(HeldForApproval):
        cat.subscription_owner("test://late")
