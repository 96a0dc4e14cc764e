"""The repo policy on seeded random inputs: the embedded engine (with its decision cache)
decides exactly as the real OPA engine (opa-golib-python-bindings, the Go ``rego`` package).

An evaluation error counts as agreement only when both engines fail (the gateway denies)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

from gateway.policy.cases import decision_dict, load_cases
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import discover_files
from tests.policy.conftest import CASES, opa_engine
from tests.policy.randinput import NOT_OBJECTS, random_inputs

SEED, N = 16, 400
NOT_OBJECT = 0.1  # the share of inputs whose arguments are not an object
ERROR = "error"


def ours(engine: EmbeddedEngine, inp: dict[str, Any]) -> Any:
    d = decision_dict(engine.decide(inp))
    return ERROR if any(r.startswith("policy evaluation failed") for r in d["reasons"]) else d


def theirs(opa: Any, inp: dict[str, Any]) -> Any:
    from opa_bindings import OpaError

    try:
        return opa.eval_document("symbi.decision", inp)
    except OpaError:
        return ERROR


def test_random_inputs_get_the_decisions_real_opa_gives() -> None:
    engine = EmbeddedEngine(discover_files())
    assert engine.load()
    opa = opa_engine()
    inputs = random_inputs(SEED, N, NOT_OBJECT)
    assert sum(not isinstance(i["arguments"], dict) for i in inputs) >= N // 20
    diffs, outcomes = [], Counter[str]()
    for inp in inputs:
        a, b = ours(engine, inp), theirs(opa, inp)
        outcomes[ERROR if a == ERROR else "allow" if a["allow"] else "deny"] += 1
        if a != b:
            diffs.append((inp, a, b))
    assert diffs == []
    # the generator reaches both outcomes in numbers (so the comparison means something)
    assert outcomes["allow"] >= N // 10 and outcomes["deny"] >= N // 2, outcomes


def test_cached_answers_equal_fresh_evaluations() -> None:
    """Each input twice more, with only fields the policy never reads changed: served from
    the cache, and still what OPA says."""
    engine = EmbeddedEngine(discover_files())
    assert engine.load()
    opa = opa_engine()
    inputs = random_inputs(SEED + 1, N // 4)
    for _ in range(3):  # a call with new target and counters is kept from its third asking
        for inp in inputs:
            ours(engine, inp)
    misses = engine.cache_misses
    for inp in inputs:
        again = copy.deepcopy(inp)
        again["context"]["time"] = "2030-01-01T00:00:00.000Z"
        again["context"]["calls_last_minute"] += 1000
        again["principal"]["claims"] = {"changed": True}
        assert ours(engine, again) == theirs(opa, again)
    assert engine.cache_hits >= len(inputs) * 9 // 10  # (errors are never cached)
    assert engine.cache_misses - misses <= len(inputs) // 10


# Unicode White_Space (what the embedded engine's regex, Rust's, took `\s` to mean; Go's `\s`,
# OPA's, is ASCII only) and characters that are not whitespace in either.
WHITE_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
NOT_SPACE = "\x1c\u180e\u200b\ufeff"


def test_urls_holding_whitespace_get_the_decision_real_opa_gives() -> None:
    """Whitespace anywhere in a URL argument refuses it on both engines (the URL pattern
    lists the whitespace it means instead of `\\s`, which the two regex dialects read
    differently: OPA let "https://example.com/a<NBSP>b" through, the embedded engine did not)."""
    engine = EmbeddedEngine(discover_files())
    assert engine.load()
    opa = opa_engine()
    base = next(c.input for c in load_cases(CASES) if c.name == "URL on an allowed host")
    assert "url" in base["arguments"]
    refused = 0
    for ch in WHITE_SPACE + NOT_SPACE:
        for url in (
            f"https://a{ch}b@example.com/",
            f"https://exa{ch}mple.com/",
            f"https://example.com/a{ch}b",
        ):
            inp = copy.deepcopy(base)
            inp["arguments"]["url"] = url
            a = ours(engine, inp)
            assert a == theirs(opa, inp), (url, a)
            if ch in WHITE_SPACE:
                assert a != ERROR and not a["allow"], (url, a)
                refused += 1
    assert refused == 3 * len(WHITE_SPACE) == 75


def test_arguments_that_are_not_an_object_are_refused_by_both_engines() -> None:
    """A tools/call whose `arguments` is a string, number, bool, null or array is refused on
    both engines with a reason naming the tool (the embedded engine failed the evaluation,
    OPA skipped the argument checks and allowed: an array holding {"path": "/etc/passwd"}
    passed them on both). A listing has no arguments: its decision does not change."""
    engine = EmbeddedEngine(discover_files())
    assert engine.load()
    opa = opa_engine()
    calls = [
        c.input
        for c in load_cases(CASES)
        if c.input.get("kind") == "tools/call" and c.input.get("action", "call") == "call"
    ]
    allowed = [i for i in calls if (d := ours(engine, i)) != ERROR and d["allow"]]
    assert len(allowed) >= 10
    for inp in allowed:
        for value in NOT_OBJECTS:
            odd = {**copy.deepcopy(inp), "arguments": copy.deepcopy(value)}
            a = ours(engine, odd)
            assert a == theirs(opa, odd), (odd, a)
            assert a != ERROR and not a["allow"], (odd, a)
            name = inp["tool"]["name"]
            assert f"arguments of tool {name} are not an object" in a["reasons"], a
            listing = {**odd, "action": "list"}
            assert ours(engine, listing) == ours(engine, {**inp, "action": "list"}) == theirs(opa, listing)


def test_a_nul_in_a_url_host_is_refused_alike_without_failing_the_evaluation() -> None:
    """A NUL in a URL argument's host (an argument or a 2026 client's answer): regorus' glob
    fails the whole evaluation on a NUL (its placeholder), so the embedded engine denied with
    "policy evaluation failed" and rebuilt its engine (~17 ms on the event loop, ~40 decisions'
    time, per such call), while OPA matched the host. The URL pattern ends the host at a NUL:
    "not an http(s) URL" on both engines, a deny with a reason and no rebuild."""
    engine = EmbeddedEngine(discover_files())
    assert engine.load()
    opa = opa_engine()
    cases = {c.name: c.input for c in load_cases(CASES)}
    base = cases["URL on an allowed host"]
    answered = cases["answer (2026 client) with a path under an allowed root"]
    for url in ("https://example.com\x00.evil.com/", "https://a@example.com\x00/", "https://\x00/"):
        inp = copy.deepcopy(base)
        inp["arguments"]["url"] = url
        a = ours(engine, inp)
        assert a != ERROR and a == theirs(opa, inp), (url, a)
        assert a["reasons"] == ["argument url is not an http(s) URL"]
        inp = copy.deepcopy(answered)
        (answer,) = inp["input_responses"].values()
        answer["content"]["url"] = url
        a = ours(engine, inp)
        assert a != ERROR and a == theirs(opa, inp) and not a["allow"], (url, a)
    assert engine.thread_engine() is not None  # never failed: the engine was kept
