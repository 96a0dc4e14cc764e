"""The decision cache's key (gateway/policy/inputkey.py): exactly the input a policy can read.

The soundness attacks: a counter or field the policy reads must change the key (else a stale
allow would be served), and every way a policy can reach the input without a constant path
(a bare ``input``, a variable index, ``with``, an import alias) must key on more, not less."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import regorus  # type: ignore[import-untyped]

from gateway.policy.engine import EmbeddedEngine
from gateway.policy.inputkey import InputReads, input_reads
from gateway.policy.loader import PolicyFiles
from tests.policy.conftest import POLICY

PKG = "package symbi\nimport rego.v1\n"
ALLOW = 'decision := {"allow": true, "reasons": [], "conditions": {}}'


def reads_of(src: str) -> tuple[InputReads | None, list[str]]:
    eng = regorus.Engine()
    eng.add_policy("p.rego", src)
    return input_reads(eng.get_ast_as_json())


def paths(src: str) -> list[str]:
    reads, volatile = reads_of(PKG + src)
    assert reads is not None and volatile == []
    return reads.paths()


def test_the_repo_policy_reads_these_input_paths_and_not_the_clock() -> None:
    reads, _ = reads_of(POLICY.read_text())
    assert reads is not None
    got = reads.paths()
    assert "context.calls_last_hour" in got  # the hourly cap: a counter the policy reads
    for unread in ("context.time", "context.unix", "context.calls_last_minute", "principal.claims"):
        assert unread not in got and not any(p.startswith(unread) for p in got)
    assert "arguments" in got  # input.arguments[k] with a variable k: all of the arguments


def test_constant_paths_object_get_keys_and_variable_indexes() -> None:
    src = (
        'a := input.tool.name\nb := object.get(input, "action", "call")\n'
        'c := object.get(input.p, ["x", "y"], 0)\nd if input.args[k] == 1\ne := input.list[0]\n'
        'f := input["q"].r\n'
    )
    assert paths(src) == ["action", "args", "list.0", "p.x.y", "q.r", "tool.name"]


def test_an_ancestor_read_whole_covers_its_children() -> None:
    assert paths("a := input.tool.name\nb := is_object(input.tool)\n") == ["tool"]


def test_every_indirect_way_to_the_input_keys_on_all_of_it() -> None:
    for src in (
        "a := input\n",
        "a := json.marshal(input)\n",
        "a if { some x in input; x == 1 }\n",
        "a := input[k]\n",
        "a if { b with input.x as 1 }\nb if input.y\n",
        f"{ALLOW}\n".replace("decision", "import input.principal as p\nd") + "x := p.id\n",
    ):
        assert paths(src) == ["(all of input)"], src


def test_a_policy_reading_the_clock_is_never_cached() -> None:
    reads, volatile = reads_of(PKG + "a := time.now_ns()\n")
    assert reads is None and volatile == ["time.now_ns"]


def test_key_changes_with_every_read_value_type_and_presence() -> None:
    reads, _ = reads_of(PKG + 'a := input.tool.name\nb := object.get(input, "n", 0)\n')
    assert reads is not None
    base: dict[str, Any] = {"tool": {"name": "x", "other": 1}, "n": 1, "unread": "u"}
    k = reads.key(base)
    assert k is not None
    assert reads.key({**base, "unread": "changed"}) == k
    assert reads.key({**base, "tool": {"name": "x", "other": 2}}) == k
    variants: list[dict[str, Any]] = [
        {**base, "n": 2},
        {**base, "n": 1.0},  # 1 and 1.0 are kept apart (only a miss, never a wrong hit)
        {**base, "n": True},
        {**base, "n": None},
        {k2: v for k2, v in base.items() if k2 != "n"},  # missing differs from null
        {**base, "tool": {"name": "y"}},
        {**base, "tool": {"other": 1}},
        {**base, "tool": "x"},
        {**base, "tool": ["x"]},
    ]
    keys = [reads.key(v) for v in variants]
    assert None not in keys
    assert len({k, *keys}) == len(variants) + 1


def test_input_that_is_not_plain_json_is_not_keyed() -> None:
    reads, _ = reads_of(PKG + "a := input.args\n")
    assert reads is not None
    # regorus keeps a number key a number; a JSON key would make it the string "1"
    assert reads.key({"args": {1: "x"}}) is None
    assert reads.key({"args": {"s": {1, 2}}}) is None
    assert reads.key({"args": {"big": "x" * 10_000}}) is None  # over MAX_KEY_CHARS: evaluated, not kept


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf, 2**64, -(2**63) - 1])
def test_numbers_without_a_json_form_are_not_keyed(odd: float) -> None:
    """NaN and infinities have no JSON text (a serializer writing them as null would give a
    NaN the cached decision of a null), and integers beyond 64 bits no fixed-width form:
    such inputs are evaluated every time, wherever the number sits."""
    reads, _ = reads_of(PKG + "a := input.args\nb := input.n\n")
    assert reads is not None
    assert reads.key({"args": {"x": None}, "n": 1}) is not None
    assert reads.key({"args": {"x": odd}, "n": 1}) is None
    assert reads.key({"args": {"x": [1, {"y": odd}]}, "n": 1}) is None
    assert reads.key({"args": {}, "n": odd}) is None


def test_numbers_without_a_json_form_are_found_in_any_container() -> None:
    """The check's fast branches take the input documents' own types (dict, list); dict and
    list subclasses and tuples, which orjson writes as objects and arrays, are checked too."""
    from collections import OrderedDict, UserList

    class Dict(dict):  # type: ignore[type-arg]
        pass

    reads, _ = reads_of(PKG + "a := input.args\n")
    assert reads is not None
    for box in (
        lambda v: OrderedDict(x=v),
        lambda v: Dict(x=v),
        lambda v: (1, v),
        lambda v: [(v,)],
        lambda v: {"x": OrderedDict(y=[v])},
    ):
        assert reads.key({"args": box(1.5)}) is not None
        assert reads.key({"args": box(math.nan)}) is None
    assert reads.key({"args": OrderedDict({1: "x"})}) is None
    assert reads.key({"args": UserList([1])}) is None  # not JSON to orjson: evaluated, not keyed


def test_key_order_inside_a_value_read_whole_does_not_matter() -> None:
    reads, _ = reads_of(PKG + "a := input.args\n")
    assert reads is not None
    a = reads.key({"args": {"b": 1, "a": {"d": 2, "c": 3}}})
    assert a is not None
    assert reads.key({"args": {"a": {"c": 3, "d": 2}, "b": 1}}) == a


def engine_for(tmp_path: Path, src: str) -> EmbeddedEngine:
    (tmp_path / "p.rego").write_text(src)
    eng = EmbeddedEngine(PolicyFiles(policy=tmp_path / "p.rego"))
    assert eng.load()
    return eng


CAPPED = PKG + (
    'default decision := {"allow": false, "reasons": ["over"], "conditions": {}}\n'
    f"{ALLOW} if input.context.calls_last_hour < 100\n"
)


def test_a_counter_the_policy_reads_is_never_served_stale(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, CAPPED)
    # listings: a call's decision is cached only from its second asking (test_engine_state.py)
    inp: dict[str, Any] = {"action": "list", "context": {"calls_last_hour": 99, "time": "t1"}}
    assert eng.decide(inp).allow is True
    assert eng.decide({"action": "list", "context": {"calls_last_hour": 99, "time": "t2"}}).allow is True
    assert eng.cache_hits == 1  # the time is not read: the second answer came from the cache
    assert eng.decide({"action": "list", "context": {"calls_last_hour": 100, "time": "t3"}}).allow is False


def test_reload_drops_the_cached_decisions(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, CAPPED)
    inp = {"context": {"calls_last_hour": 5}}
    assert eng.decide(inp).allow is True and eng.decide(inp).allow is True
    (tmp_path / "p.rego").write_text(CAPPED.replace("< 100", "< 3"))
    assert eng.reload()
    assert eng.decide(inp).allow is False


def test_a_failed_evaluation_is_not_cached(tmp_path: Path) -> None:
    eng = engine_for(tmp_path, PKG + f"default {ALLOW}\n" + "decision := 1 / 0 if input.zero\n")
    for _ in range(2):
        assert eng.decide({"zero": True}).allow is False
    assert eng.cache_hits == 0


def test_a_caller_editing_a_decision_cannot_edit_the_cache(tmp_path: Path) -> None:
    src = PKG + (
        'decision := {"allow": true, "reasons": [], "conditions": {"rate_limit": 5, "redact_result": ["k"]}}\n'
    )
    eng = engine_for(tmp_path, src)
    saved: Any = None
    for _ in range(2):  # the answer of the evaluation, then the cached one
        cond: Any = eng.decide({"action": "list"}).conditions
        saved = saved or copy.deepcopy(cond)
        cond["rate_limit"] = 10_000
        cond["redact_result"].clear()
    assert eng.decide({"action": "list"}).conditions == saved and eng.cache_hits == 2


def test_a_tool_listed_again_with_the_same_counters_is_answered_from_the_cache(
    repo_engine: EmbeddedEngine,
) -> None:
    from gateway.context import Principal, ToolInfo
    from gateway.steps.policy import filter_listing

    tools = [
        ToolInfo(name=f"{u}__t{i}", original_name=f"t{i}", upstream=u, definition={}, verification="pinned")
        for u in ("time", "fs", "evil")
        for i in range(5)
    ]
    who = Principal(id="local", roles=("developer",), source="stdio")
    first = filter_listing(repo_engine, who, tools)
    hits = repo_engine.cache_hits
    assert filter_listing(repo_engine, who, tools) == first
    assert repo_engine.cache_hits - hits == len(tools)
    assert [t.upstream for t in first] == ["time"] * 5  # time__* only: the listing still filters


def test_a_fingerprint_only_for_a_policy_reading_a_counter_and_over_what_it_reads() -> None:
    hour = reads_of(PKG + "r if input.context.calls_last_hour > input.target\n")[0]
    whole = reads_of(PKG + "r if input.context.x\n")[0]  # reads context.x only: no counter
    ctx = reads_of(PKG + "r if input.context\n")[0]  # all of the context: every counter
    assert hour is not None and whole is not None and ctx is not None
    assert (hour.counters, whole.counters, ctx.counters) == (
        ("calls_last_hour",),
        (),
        ("calls_last_minute", "calls_last_hour", "tool_calls_last_minute"),
    )
    doc = {"target": "t", "context": {"calls_last_hour": 3, "calls_last_minute": 1}}
    assert whole.fingerprint(doc) is None
    assert hour.fingerprint(doc) == hour.fingerprint({**doc, "arguments": {"a": 1}})
    assert hour.fingerprint(doc) != hour.fingerprint({**doc, "context": {"calls_last_hour": 4}})
    assert hour.fingerprint(doc) != hour.fingerprint({**doc, "target": "u"})
    # a counter it does not read does not split the fingerprint; one it reads does
    assert hour.fingerprint(doc) == hour.fingerprint({**doc, "context": {"calls_last_hour": 3}})
    assert ctx.fingerprint(doc) != ctx.fingerprint({**doc, "context": {"calls_last_hour": 3}})
    assert hour.fingerprint({"target": ["x"], "context": {}}) is None  # unhashable: the key decides
    assert hour.fingerprint({"target": "t", "context": 5}) is None
    # a policy that does not read the target: two calls with the same key, the same fingerprint
    counter_only = reads_of(PKG + "r if input.context.calls_last_hour > 0\n")[0]
    assert counter_only is not None
    assert counter_only.fingerprint(doc) == counter_only.fingerprint({**doc, "target": "u"})


def test_the_fingerprint_holds_the_principals_id_when_the_policy_reads_it() -> None:
    """Many callers whose counts run alike: their calls' fingerprints differ by who calls
    (else each call's key is made and never asked again); a policy that does not read the
    id gives two callers' inputs with the same key the same fingerprint."""
    by_id = reads_of(PKG + 'r if { input.context.calls_last_hour > 0; input.principal.id == "a" }\n')[0]
    whole = reads_of(PKG + "r if { input.context.calls_last_hour > 0; input.principal }\n")[0]
    by_role = reads_of(PKG + 'r if { input.context.calls_last_hour > 0; input.principal.roles[_] == "x" }\n')[
        0
    ]
    assert by_id is not None and whole is not None and by_role is not None
    doc = {"target": "t", "principal": {"id": "a", "roles": []}, "context": {"calls_last_hour": 3}}
    other = {**doc, "principal": {"id": "b", "roles": []}}
    assert by_id.fingerprint(doc) != by_id.fingerprint(other)
    assert whole.fingerprint(doc) != whole.fingerprint(other)
    assert by_role.fingerprint(doc) == by_role.fingerprint(other)  # the same key: the same fingerprint
    assert by_id.fingerprint({**doc, "principal": "a"}) == by_id.fingerprint({**doc, "principal": None})
