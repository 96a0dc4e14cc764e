"""The default policy's indexed tool patterns (``data_index``, precomputed per load) and its
one-rule fast paths (``facts``: well-formed tool, bus and memory requests) decide exactly as
the plain rules did: the previous policies (``reference/policies_v1.rego``, every pattern
globbed and every rule evaluated on every decision; ``reference/policies_v2.rego``, session
7's; ``reference/policies_v3.rego``, session 8's; ``reference/policies_v4.rego``, session 9's; ``reference/policies_v5.rego``, sessions 10-18's; ``reference/policies_v6.rego``,
session 19's)
and the real OPA engine agree with the embedded engine on the cases, on seeded random
inputs, and on seeded random data files whose patterns mix literals, keyed globs
(``fs__read_*``), unkeyed ones (``*``, ``f?__x``, ``{a,b}__*``) and glob syntax the index must
not take for a literal (``[x]``, ``\\*``). OPA decides both ways: without the precomputed
index (its general rules) and with it (the fast paths)."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import PolicyLoadError
from gateway.policy.cases import load_cases
from gateway.policy.loader import PolicyBundle, bundle_from_sources, new_engine, precompute
from tests.policy.conftest import CASES, DATA, POLICY, opa_engine
from tests.policy.parity import DECISION, ERROR, decide, facts_fields, load_policy, opa_decide
from tests.policy.randinput import KINDS, TOOLS, random_inputs

REFERENCE = Path(__file__).parent / "reference" / "policies_v1.rego"
PREVIOUS = Path(__file__).parent / "reference" / "policies_v4.rego"
SESSION8 = Path(__file__).parent / "reference" / "policies_v3.rego"
SESSION7 = Path(__file__).parent / "reference" / "policies_v2.rego"
SESSION18 = Path(__file__).parent / "reference" / "policies_v5.rego"
SESSION19 = Path(__file__).parent / "reference" / "policies_v6.rego"

PATTERNS = [
    "*",
    "**",
    "time__*",
    "fs__read_*",
    "fs__read_a.b",
    "fs__list_*",
    "fs__move_file",
    "everything__echo",
    "everything__get-*",
    "everything__get-env",
    "sandbox__run_?ython",
    "sandbox__*",
    "f?__*",
    "*__echo",
    "{fs,time}__*",
    "fs__{read,write}_*",
    "[x]",
    "[ef]*__*",
    "evil__x",
    "bus__*",
    "memory__recall",
    "knowledge__*",
    "a__b__*",
    "time\\*",
]


def _random_data(r: random.Random, base: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    d = data["symbi_data"]
    for role in d["roles"].values():
        role["tools"] = r.sample(PATTERNS, r.randint(0, 8))
        if r.random() < 0.6:
            role["deny_tools"] = r.sample(PATTERNS, r.randint(0, 3))
    for key in ("alice", "ci-bot", "auditor"):
        entry = d["principals"]["keys"][key]
        entry["tools"] = r.sample(PATTERNS, r.randint(0, 2))
        entry["deny_tools"] = r.sample(PATTERNS, r.randint(0, 2))
    d["tool_rate_limits"] = {p: r.randint(1, 99) for p in r.sample(PATTERNS, r.randint(0, 4))}
    d["max_result_bytes"] = {p: r.randint(100, 10**6) for p in r.sample(PATTERNS, r.randint(0, 4))}
    d["redact_arguments"] = {p: r.sample(["token", "password", "key"], 2) for p in r.sample(PATTERNS, 3)}
    d["redact_result"] = {p: ["secret"] for p in r.sample(PATTERNS, r.randint(0, 2))}
    d["audit_minimal"] = r.sample(PATTERNS, r.randint(0, 4))
    # who may serve unverified tools (facts reads it from the index), and now and then an
    # upstream entry that is not an object (the fast path leaves those data to the general rules)
    for name in ("time", "everything", "fs", "sandbox", "evil"):
        d.setdefault("upstreams", {})[name] = r.choice(
            [{}, {"allow_unverified": True}, {"allow_unverified": "true"}]
        )
    if r.random() < 0.25:
        d["upstreams"]["evil"] = r.choice(["x", None, ["allow_unverified"]])
    if r.random() < 0.3:
        d.pop(r.choice(["audit_minimal", "tool_rate_limits", "redact_result", "path_arguments"]))
    return data


def _inputs(seed: int, n: int, not_object: float = 0.0) -> list[dict[str, Any]]:
    """Random inputs, with tool names also drawn from the patterns (literal names that
    look like globs) and names with several "__" or none (a share ``not_object`` with
    arguments that are not an object: the references fail those on the embedded engine)."""
    r = random.Random(seed)
    out = random_inputs(seed, n, not_object)
    for inp in out:
        if inp["kind"] == "tools/call" and isinstance(inp.get("tool"), dict) and r.random() < 0.3:
            name = r.choice([*PATTERNS, *TOOLS, "a__b__c", "time", "fs__read_x.y", "time*"])
            inp["tool"]["name"] = inp["target"] = name
    return out


def _as_before(inp: dict[str, Any]) -> bool:
    """Whether the reference policies decide ``inp`` as this one must. Not a prompts/get: it
    has had the argument checks and redaction of a tool call since (red team /tmp/rt-call r1),
    where the references allowed any arguments and gave no conditions; not a bus/send: it
    compares qualified principals since the red team's A1 (a JWT sub=alice is not the API key
    alice), which the references did not; not one with a 2026 client's answers, which the
    references did not check; not a URL argument with a NUL, which failed the references'
    evaluation (regorus' glob) and is no URL since session 39; not an upstream's own request to
    the client (kind server_request, decided since session 40). OPA still decides every one."""
    args = inp.get("arguments")
    url = args.get("url") if isinstance(args, dict) else None
    nul_url = isinstance(url, str) and "\x00" in url
    return (
        inp.get("kind") not in ("prompts/get", "bus/send", "server_request")
        and "input_responses" not in inp
        and not nul_url
    )


def test_the_shipped_data_decides_as_the_unindexed_policy_did() -> None:
    data = json.loads(DATA.read_text())
    bundle, new = load_policy(POLICY.read_text(), data)
    assert bundle.precomputed is not None  # the index is computed once, not per decision
    _, old = load_policy(REFERENCE.read_text(), data)
    cases = [c.input for c in load_cases(CASES)]
    assert len(cases) >= 90
    inputs = cases + _inputs(61, 600)
    diffs = [(i, a, b) for i in inputs if _as_before(i) and (a := decide(new, i)) != (b := decide(old, i))]
    assert diffs == []


@pytest.mark.parametrize("seed", range(4))
def test_random_data_decides_as_the_unindexed_policy_and_as_opa(seed: int) -> None:
    r = random.Random(1000 + seed)
    data = _random_data(r, json.loads(DATA.read_text()))
    bundle, new = load_policy(POLICY.read_text(), data)
    _, old = load_policy(REFERENCE.read_text(), data)
    _, previous = load_policy(PREVIOUS.read_text(), data)
    _, session8 = load_policy(SESSION8.read_text(), data)
    _, session7 = load_policy(SESSION7.read_text(), data)
    _, session18 = load_policy(SESSION18.read_text(), data)
    _, session19 = load_policy(SESSION19.read_text(), data)
    assert bundle.precomputed is not None
    opa = opa_engine(data=data)
    assert bundle.precomputed is not None
    opa_indexed = opa_engine(data={**data, **bundle.precomputed})  # the fast paths on OPA
    outcomes = {"allow": 0, "deny": 0}
    for inp in _inputs(seed, 150):
        a = decide(new, inp)
        if _as_before(inp):
            assert a == decide(old, inp), inp
            assert a == decide(previous, inp), inp
            assert a == decide(session8, inp), inp
            assert a == decide(session7, inp), inp
            assert a == decide(session18, inp), inp
            assert a == decide(session19, inp), inp
        assert a == opa_decide(opa, inp), inp
        assert a == opa_decide(opa_indexed, inp), inp
        if a != ERROR:
            outcomes["allow" if a["allow"] else "deny"] += 1
    assert outcomes["allow"] >= 10 and outcomes["deny"] >= 50, outcomes


ROOTS = ["/srv/symbi", "/srv/symbi/", "/srv//", "/", "", "data", "data/", "./data", "/tmp/a.b", "/x\\y"]
PATH_PARTS = [
    "",
    "/",
    "//",
    ".",
    "..",
    "...",
    ".x",
    "x.",
    "srv",
    "symbi",
    "symbi2",
    "data",
    "a.b",
    "\\",
    "\u0000",
    "x",
]


def _random_path(r: random.Random, roots: list[str]) -> Any:
    """Paths built from segments the check must get right: the roots themselves (as listed
    and without their trailing "/"s), "." / ".." / "..." segments, backslashes, NULs, near-miss names."""
    if r.random() < 0.05:
        return r.choice([None, 7, ["/srv/symbi/x"], {"p": "/srv/symbi"}])
    if r.random() < 0.6:
        root = r.choice(roots)
        return r.choice([root, root.rstrip("/")]) + r.choice(
            ["", "/", "/x", "x", "/.", "/..", "/../x", "\u0000"]
        )
    return "".join(r.choice(PATH_PARTS) + r.choice(["/", "", "/"]) for _ in range(r.randint(0, 5)))


@pytest.mark.parametrize("seed", range(3))
def test_path_arguments_are_checked_as_the_previous_policy_and_opa_check_them(seed: int) -> None:
    """The path check (one rule body: a NUL-terminated prefix match) against session 9's
    (a segment split and a root lookup) and OPA, on random roots and paths."""
    r = random.Random(2000 + seed)
    data = json.loads(DATA.read_text())
    roots = r.sample(ROOTS, r.randint(1, 4))
    if not any(x.endswith("/") for x in roots):  # a root listed with its "/": not the same name
        roots.append(r.choice([x for x in ROOTS if x.endswith("/")]))
    data["symbi_data"]["fs_roots"] = roots
    bundle, new = load_policy(POLICY.read_text(), data)
    _, previous = load_policy(PREVIOUS.read_text(), data)
    assert bundle.precomputed is not None
    opa_indexed = opa_engine(data={**data, **bundle.precomputed})
    base = load_cases(CASES)[0].input
    outcomes = {"allow": 0, "deny": 0}
    for _ in range(150):
        inp = copy.deepcopy(base)
        inp["tool"]["name"] = inp["target"] = "fs__read_text_file"
        inp["upstream"]["name"] = "fs"
        key = r.choice(["path", "paths", "source"])
        inp["arguments"] = {
            key: (
                [_random_path(r, roots) for _ in range(r.randint(0, 3))]
                if key == "paths"
                else _random_path(r, roots)
            )
        }
        a = decide(new, inp)
        assert a == decide(previous, inp), inp
        assert a == opa_decide(opa_indexed, inp), inp
        if a != ERROR:
            outcomes["allow" if a["allow"] else "deny"] += 1
    assert outcomes["allow"] >= 15 and outcomes["deny"] >= 30, outcomes


def _random_url(r: random.Random) -> str:
    """A URL from parts that each pattern reads: scheme case, userinfo (with ":", "[", "]"
    and an "@" or not), host forms (IPv6, a glob's and a listed host, odd characters), ports
    of 0-6 digits, and a tail that may hold "@", ":" and a backslash."""
    scheme = r.choice(["http", "https", "HTTPS", "hTTp", "ftp", "https:", "http\u017f"])
    user = r.choice(["", "", "u@", "u:p@", "[x]@", "@", "a@b@", ":@", "a\\b@"])
    host = r.choice(
        [
            "example.com",
            "EXAMPLE.com",
            "a.example.com",
            "evil.com",
            "[::1]",
            "[::1",
            "127.0.0.1",
            "",
            "a:b",
            "ex]am",
        ]
    )
    port = r.choice(["", "", ":", ":8", ":8443", ":12345", ":123456", ":x"])
    tail = r.choice(["", "/", "/a@b", "?q=a:b", "#@evil.com", "/a\\b", "/%40"])
    return f"{scheme}://{user}{host}{port}{tail}"


@pytest.mark.parametrize("seed", range(2))
def test_url_arguments_are_checked_as_the_previous_policy_and_opa_check_them(seed: int) -> None:
    """The URL check (the pattern without userinfo for a URL without an "@", the host check
    inline) against session 19's (one pattern, `url_refused` and `host_ok`) and OPA with and
    without the index, on random URLs (a string, or arrays of them)."""
    r = random.Random(3000 + seed)
    data = json.loads(DATA.read_text())
    bundle, new = load_policy(POLICY.read_text(), data)
    _, previous = load_policy(SESSION19.read_text(), data)
    assert bundle.precomputed is not None
    opa, opa_indexed = opa_engine(data=data), opa_engine(data={**data, **bundle.precomputed})
    base = next(c.input for c in load_cases(CASES) if c.name == "URL on an allowed host")
    outcomes = {"allow": 0, "deny": 0}
    for _ in range(200):
        inp = copy.deepcopy(base)
        key = r.choice(["url", "uri", "endpoint"])
        inp["arguments"] = {
            key: [_random_url(r) for _ in range(r.randint(0, 3))] if r.random() < 0.2 else _random_url(r)
        }
        a = decide(new, inp)
        assert a == decide(previous, inp), inp
        assert a == opa_decide(opa, inp) == opa_decide(opa_indexed, inp), inp
        if a != ERROR:
            outcomes["allow" if a["allow"] else "deny"] += 1
    assert outcomes["allow"] >= 20 and outcomes["deny"] >= 60, outcomes


def test_prefix_patterns_that_give_the_same_hit_each_give_it() -> None:
    """The index keeps a bucket's prefix patterns per hit (one strings.any_prefix_match for
    all the prefixes of "tools", of an audit_minimal, of a rate limit...): a name under any
    of them gets the hit, as session 19's policy and OPA (with the index) decide."""
    data = json.loads(DATA.read_text())
    d = data["symbi_data"]
    pats = ["fs__read_*", "fs__list_*", "fs__get_*"]
    d["roles"]["developer"]["tools"] = pats
    d["roles"]["developer"]["deny_tools"] = ["fs__get_x*", "fs__list_x*"]
    d["audit_minimal"] = pats
    d["tool_rate_limits"] = dict.fromkeys(pats, 7)
    d["max_result_bytes"] = dict.fromkeys(pats, 999)
    d["redact_arguments"] = {p: ["token"] for p in pats}
    d["redact_result"] = {p: ["secret"] for p in pats}
    bundle, new = load_policy(POLICY.read_text(), data)
    _, previous = load_policy(SESSION19.read_text(), data)
    assert bundle.precomputed is not None
    opa_indexed = opa_engine(data={**data, **bundle.precomputed})
    base = load_cases(CASES)[0].input
    granted = 0
    for name in [
        "fs__read_a",
        "fs__list_b",
        "fs__get_c",
        "fs__get_xy",
        "fs__list_x",
        "fs__write_d",
        "fs__readx",
    ]:
        inp = copy.deepcopy(base)
        inp["tool"]["name"] = inp["target"] = name
        inp["upstream"]["name"] = inp["tool"]["upstream"] = "fs"
        a = decide(new, inp)
        assert a == decide(previous, inp) == opa_decide(opa_indexed, inp), name
        if a != ERROR and a["allow"]:
            assert a["conditions"] == {
                "rate_limit": 7,
                "audit": "minimal",
                "max_result_bytes": 999,
                "redact_arguments": ["token"],
                "redact_result": ["secret"],
            }, name
            granted += 1
    assert granted == 3


def test_the_shipped_data_decides_as_opa_with_the_index() -> None:
    """OPA given the precomputed index runs the fast paths, as the embedded engine does."""
    data = json.loads(DATA.read_text())
    bundle, new = load_policy(POLICY.read_text(), data)
    assert bundle.precomputed is not None
    opa = opa_engine(data={**data, **bundle.precomputed})
    inputs = [c.input for c in load_cases(CASES)] + _inputs(62, 400, 0.1)
    diffs = [(i, a, b) for i in inputs if (a := decide(new, i)) != (b := opa_decide(opa, i))]
    assert diffs == []


# every kind the policy knows (server_request: its own test, below)
@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"weird/kind", "server_request"}))
def test_well_formed_requests_of_the_frequent_kinds_take_the_fast_path(kind: str) -> None:
    """The cases of each frequent kind (a principal of a known source; a tool object, or an
    agent for memory) are decided by `facts` (one rule body), not by the rule-by-rule
    general path: the speed of issue 16 depends on it. Other kinds and inputs missing a field
    the fast paths need (here the principal id) go to the general rules."""
    bundle, engine = load_policy(POLICY.read_text(), json.loads(DATA.read_text()))
    inputs = [
        c.input
        for c in load_cases(CASES)
        if c.input.get("kind") == kind
        and c.input.get("principal", {}).get("source") in {"stdio", "key", "jwt", "anonymous"}
        and (kind == "tools/call") == isinstance(c.input.get("tool"), dict)
        and (not kind.startswith(("context/", "knowledge/")) or isinstance(c.input.get("agent"), dict))
    ]
    assert inputs
    for inp in inputs:
        assert facts_fields(engine, inp) == {"refusals", "granted", "conditions"}, inp
    odd: dict[str, Any]
    for odd in ({"kind": "knowledge/ingest"}, {"kind": "weird/kind"}, {"principal": {"roles": []}}):
        assert facts_fields(engine, {**inputs[0], **odd}) is None  # the general rules decide


def test_an_index_of_other_data_is_not_used() -> None:
    """A precomputed index only counts for the data it was computed from: an engine given
    another data document (as `with data.symbi_data as ...` in a test does) recomputes it."""
    data = json.loads(DATA.read_text())
    bundle, _ = load_policy(POLICY.read_text(), data)
    other = copy.deepcopy(data)
    other["symbi_data"]["roles"]["developer"]["tools"] = ["fs__*"]
    stale = PolicyBundle(modules=bundle.modules, data=other, precomputed=bundle.precomputed)
    inp = json.loads(CASES.read_text())["base"]  # local (developer) calls time__get_current_time
    assert decide(new_engine(bundle), inp)["allow"] is True
    denied = decide(new_engine(stale), inp)
    assert denied["allow"] is False
    assert denied["reasons"] == [
        "principal local may not use tool time__get_current_time (not in its allow-list)"
    ]


def test_the_index_holds_no_principals() -> None:
    """The index is a function of the data but its principals, so a decision's check that it
    is the one of the data in force does not grow with the number of API keys."""
    data = json.loads(DATA.read_text())
    many = copy.deepcopy(data)
    for i in range(300):
        many["symbi_data"]["principals"]["keys"][f"k{i}"] = {"roles": ["developer"], "tools": ["fs__*"]}
    bundle, _ = load_policy(POLICY.read_text(), data)
    bundle_many, _ = load_policy(POLICY.read_text(), many)
    assert bundle.precomputed == bundle_many.precomputed
    assert "principals" not in json.dumps(bundle.precomputed)


def test_principals_are_read_from_the_data_in_force() -> None:
    """An index computed before a principal's entry changed (here: another role, its own
    deny-list, another rate limit) decides with the entry in force."""
    data = json.loads(DATA.read_text())
    bundle, _ = load_policy(POLICY.read_text(), data)
    inp = json.loads(CASES.read_text())["base"]  # local (developer) calls time__get_current_time
    assert decide(new_engine(bundle), inp)["conditions"]["rate_limit"] == 120
    other = copy.deepcopy(data)
    local = other["symbi_data"]["principals"]["stdio"]["local"]
    local["rate_limit"] = 7
    changed = PolicyBundle(modules=bundle.modules, data=other, precomputed=bundle.precomputed)
    assert decide(new_engine(changed), inp)["conditions"]["rate_limit"] == 7
    local["deny_tools"] = ["time__*"]
    assert decide(new_engine(changed), inp)["reasons"] == [
        "tool time__get_current_time is on the deny-list of principal local"
    ]
    local.pop("deny_tools")
    local["roles"] = ["readonly"]
    inp = {**inp, "principal": {**inp["principal"], "roles": []}, "target": "fs__write_file"}
    inp["tool"] = {**inp["tool"], "name": "fs__write_file"}
    assert decide(new_engine(changed), inp)["reasons"] == [
        "principal local may not use tool fs__write_file (not in its allow-list)"
    ]


def test_a_data_index_that_reads_the_input_is_refused() -> None:
    src = 'package symbi\nimport rego.v1\ndata_index := {"k": input.kind}\ndecision := {"allow": false}\n'
    bundle = bundle_from_sources(("p.rego", src))
    with pytest.raises(PolicyLoadError):
        precompute(bundle, DECISION)


def test_a_policy_without_data_index_gets_nothing_precomputed() -> None:
    bundle, _ = load_policy(REFERENCE.read_text(), json.loads(DATA.read_text()))
    assert bundle.precomputed is None


def test_a_name_without_its_keys_separator_gets_nothing_of_that_key() -> None:
    """`time__*` is merged at load into what every name of key `time` gets (the bucket's
    `always`); the name `time` itself (no "__") has that key too but must not match it."""
    data = json.loads(DATA.read_text())
    d = data["symbi_data"]
    d["roles"]["developer"]["tools"] = ["time__*", "fs__read_*"]
    d["tool_rate_limits"] = {"time__*": 5, "fs__read_*": 7, "fs__read_secret": 3}
    d["audit_minimal"] = ["time__*"]
    _, new = load_policy(POLICY.read_text(), data)
    _, old = load_policy(REFERENCE.read_text(), data)
    base = json.loads(CASES.read_text())["base"]  # local (developer), time__get_current_time

    def ask(name: str) -> Any:
        inp = {**base, "target": name, "tool": {**base["tool"], "name": name}}
        got = decide(new, inp)
        assert got == decide(old, inp), name
        return got

    assert ask("time__x")["conditions"] == {
        "rate_limit": 5,
        "audit": "minimal",
        "max_result_bytes": 1048576,
        "redact_arguments": ["api_key", "password", "token"],
    }
    assert ask("time")["allow"] is False
    assert ask("time*")["allow"] is False
    assert ask("fs__read_x")["conditions"]["rate_limit"] == 7  # a prefix pattern, not merged
    assert ask("fs__read_secret")["conditions"]["rate_limit"] == 3  # and a literal one
    assert ask("fs__readme")["allow"] is False
