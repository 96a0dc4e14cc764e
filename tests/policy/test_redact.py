"""Redaction by key name and by /json/pointer, and the result size cap."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from mcp.types import (
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
    TextResourceContents,
)

from gateway.audit.record import canonical_details
from gateway.errors import PolicyDenied
from gateway.policy.redact import (
    HITS_KEY_CHARS,
    HITS_KEYS,
    REDACTED,
    _words,
    audit_copy,
    compile_rules,
    redact,
    redact_with_audit,
    scrub_values,
)
from gateway.policy.results import cap_result, redact_result, result_size


@pytest.fixture(autouse=True)
def _compiled_afresh() -> None:
    """Each test compiles its rule lists and splits its keys anew: what an earlier test left in
    the caches (compiled lists, keys remembered, words) must not answer for this one."""
    compile_rules.cache_clear()
    _words.cache_clear()


def test_key_names_at_any_depth_case_insensitive() -> None:
    doc = {"Password": "a", "list": [{"token": "b"}, {"x": 1}], "deep": {"deeper": {"API_KEY": "c"}}}
    out, n = redact(doc, ["password", "token", "api_key"])
    assert n == 3
    assert out == {
        "Password": REDACTED,
        "list": [{"token": REDACTED}, {"x": 1}],
        "deep": {"deeper": {"API_KEY": REDACTED}},
    }
    assert doc["Password"] == "a"  # a copy; the original is untouched


def test_pointer_redacts_only_that_location() -> None:
    doc = {"headers": {"authorization": "Bearer x", "accept": "y"}, "authorization": "keep"}
    out, n = redact(doc, ["/headers/authorization"])
    assert n == 1 and out == {"headers": {"authorization": REDACTED, "accept": "y"}, "authorization": "keep"}


def test_pointer_matches_header_case_and_array_index_and_escapes() -> None:
    doc = {"headers": {"Authorization": "x"}, "items": [{"s": 1}, {"s": 2}], "a/b": {"~c": 3}}
    out, n = redact(doc, ["/headers/authorization", "/items/1/s", "/a~1b/~0c", "/items/9/s", "/missing/x"])
    assert n == 3
    assert out["headers"]["Authorization"] == REDACTED and out["items"] == [{"s": 1}, {"s": REDACTED}]
    assert out["a/b"]["~c"] == REDACTED


def _text(block: ContentBlock) -> str:
    assert isinstance(block, TextContent)
    return block.text


def test_result_redaction_covers_json_text_and_structured_content() -> None:
    r = CallToolResult(
        content=[
            TextContent(type="text", text=json.dumps({"secret": "s1"})),
            TextContent(type="text", text="secret: prose"),
        ],
        structured_content={"secret": "s2", "ok": 1},
    )
    out = redact_result(r, ["secret"])
    assert "s1" not in out.model_dump_json() and "s2" not in out.model_dump_json()
    assert _text(out.content[1]) == "secret: prose"  # prose has no keys: documented as unchanged


def test_cap_keeps_small_results_and_cuts_text_at_utf8_boundaries() -> None:
    small = CallToolResult(content=[TextContent(type="text", text="hi")])
    assert cap_result(small, 1000) is small
    r = CallToolResult(
        content=[TextContent(type="text", text="a" * 10), TextContent(type="text", text="€" * 100)]
    )
    out = cap_result(r, 50)
    assert _text(out.content[0]) == "a" * 10
    cut = _text(out.content[1]).split("\n[truncated")[0]
    assert cut == "€" * 13  # 40 bytes left: 13 whole 3-byte characters, never half of one
    assert "[truncated" in _text(out.content[1])


def test_cap_drops_structured_content_and_errors_on_non_text() -> None:
    r = CallToolResult(content=[TextContent(type="text", text="x")], structured_content={"blob": "y" * 500})
    out = cap_result(r, 100)
    assert out.structured_content is None and not out.is_error
    res = EmbeddedResource(type="resource", resource=TextResourceContents(uri="file:///a", text="z" * 500))
    out2 = cap_result(CallToolResult(content=[res]), 100)
    assert out2.is_error is True and result_size(out2) < 300


# -- edges found by mutation testing (scripts/mutate.py, group "policy") -------------------------


def test_counts_every_replaced_value_and_never_touches_the_input() -> None:
    doc = {"a": {"password": "p", "token": "t", "keep": [1, {"password": "q"}]}, "items": ["x", "y"]}
    snapshot = json.loads(json.dumps(doc))
    out, n = redact(doc, ["password", "token", "/items/1", "/a/keep/0"])
    assert n == 5
    assert out == {
        "a": {"password": REDACTED, "token": REDACTED, "keep": [REDACTED, {"password": REDACTED}]},
        "items": ["x", REDACTED],
    }
    assert doc == snapshot  # deep copy: nested values of the input are untouched


def test_pointer_edges_case_short_paths_and_out_of_range_indexes() -> None:
    doc = {
        "headers": {"accept": "y", "authorization": "secret"},
        "a": 1,
        "list": ["p", "q"],
        "": "root-key",
        "/a": "a key with a slash",
    }
    out, n = redact(doc, ["/headers/Authorization"])  # a header name in another case
    assert (n, out["headers"]) == (1, {"accept": "y", "authorization": REDACTED})
    assert redact(doc, ["/a"]) == ({**doc, "a": REDACTED}, 1)  # a two-character pointer; not a key rule
    assert redact(doc, ["/list/2"]) == (doc, 0)  # one past the end: nothing, no error
    assert redact(doc, ["/list/1"]) == ({**doc, "list": ["p", REDACTED]}, 1)
    assert redact(doc, ["/nope/x"]) == (doc, 0)
    assert redact(doc, ["/a/deeper"]) == (doc, 0)
    assert redact(doc, ["/"]) == (doc, 0)  # the bare "/" is not a rule


def test_result_redaction_edges() -> None:
    result = CallToolResult(
        content=[
            TextContent(type="text", text='{"not json'),
            TextContent(type="text", text='[{"token":"t","name":"é"}]'),
            TextContent(type="text", text='{"clean":1}'),
            EmbeddedResource(
                type="resource", resource=TextResourceContents(uri="file:///x", text='{"token":"t"}')
            ),
        ],
        structured_content={"token": "t", "ok": 1},
    )
    out = redact_result(result, ["token"])
    texts = [c.text for c in out.content[:3]]  # type: ignore[union-attr]
    assert texts == ['{"not json', '[{"token": "[REDACTED]", "name": "é"}]', '{"clean":1}']
    assert out.content[2] is result.content[2]  # nothing to redact: the very item
    assert json.loads(out.content[3].resource.text) == {"token": REDACTED}  # type: ignore[union-attr]
    assert out.structured_content == {"token": REDACTED, "ok": 1}
    assert result.structured_content == {"token": "t", "ok": 1}


def _texts(r: CallToolResult) -> list[str]:
    return [c.text for c in r.content]  # type: ignore[union-attr]


def test_cap_edges_exact_fit_zero_budget_and_structured_only() -> None:
    from gateway.policy.results import TRUNCATION_MARK

    r = CallToolResult(content=[TextContent(type="text", text="abc"), TextContent(type="text", text="def")])
    assert cap_result(r, result_size(r)) is r  # exactly at the cap: unchanged
    out = cap_result(r, 3)  # the first text fills the budget exactly: the second is cut to nothing
    assert _texts(out) == ["abc", TRUNCATION_MARK.format(cap=3)]
    assert not out.is_error
    one = cap_result(CallToolResult(content=[TextContent(type="text", text="abcdef")]), 4)
    assert _texts(one) == [
        "abcd" + TRUNCATION_MARK.format(cap=4)
    ]  # the cut item carries the mark; no extra item
    big = CallToolResult(content=[TextContent(type="text", text="ok")], structured_content={"x": "y" * 500})
    out = cap_result(big, 100)
    assert _texts(out) == ["ok", TRUNCATION_MARK.format(cap=100).strip()]
    assert out.content[-1].type == "text" and out.structured_content is None


def test_key_variants_cannot_slip_past_a_rule() -> None:
    """Attack: the same secret under another spelling of the key went through in clear."""
    doc = {
        "apiKey": "1",
        "api-key": "2",
        "API_KEY": "3",
        "x-api-key": "4",
        "OPENAI_API_KEY": "5",
        "apikey": "6",
        "access_token": "7",
        "Pass\u200bword": "8",
        "ｐａｓｓｗｏｒｄ": "9",  # fullwidth: NFKC folds it
        "PassWord": "10",
        "nested": [{"refreshToken": "11"}],
    }
    out, n = redact(doc, ["api_key", "password", "token"])
    assert n == 11
    assert all(v == REDACTED for k, v in out.items() if k != "nested")
    assert out["nested"] == [{"refreshToken": REDACTED}]


def test_similar_but_different_keys_are_kept() -> None:
    doc = {"max_tokens": 100, "tokenizer": "bpe", "passwordPolicy": "strong", "keyboard": "us"}
    out, n = redact(doc, ["token", "password", "key"])
    assert n == 0 and out == doc


SECRETS = [
    "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
    "sk-proj-" + "A1b2C3d4" * 5,
    "sk-ant-api03-" + "x" * 40,
    "ghp_" + "a" * 36,
    "AKIA" + "ABCDEFGHIJKLMNOP",
    "AIza" + "S" * 35,
    "xoxb-1234567890-abcdefghij",
    "sk_live_" + "4" * 24,
    "glpat-" + "z" * 20,
    "symbi_" + "k" * 32,
]


def test_secret_values_are_redacted_wherever_they_appear() -> None:
    """Attack: a secret under a harmless key (or inside prose) went through in clear."""
    for secret in SECRETS:
        out, n = redact({"note": f"here it is: {secret} (keep this)"}, ["password"])
        assert n >= 1 and secret not in json.dumps(out), secret
        assert out["note"].startswith("here it is: ") and out["note"].endswith("(keep this)")
    r = CallToolResult(content=[TextContent(type="text", text=f"env: {SECRETS[0]} {SECRETS[4]}")])
    text = redact_result(r, ["password"]).content[0].text  # type: ignore[union-attr]
    assert SECRETS[0] not in text and SECRETS[4] not in text and text.startswith("env: ")


# -- found by mutation testing (scripts/mutate.py, group "policy") -----------------------


def test_secret_values_in_json_text_are_scrubbed_whichever_key_or_item_holds_them() -> None:
    """Attack: a JSON text item whose secret is not under its last key (or last list item) came
    back unredacted, because the count of replaced values lost the earlier ones."""
    secret = SECRETS[0]
    for doc in ({"note": secret, "other": "x"}, [secret, "x"], {"a": [secret, "x"], "b": {"c": "x"}}):
        out, n = redact(doc, ["password"])
        assert n == 1 and secret not in json.dumps(out)
        r = CallToolResult(content=[TextContent(type="text", text=json.dumps(doc))])
        assert secret not in _texts(redact_result(r, ["password"]))[0]
    # every replaced value is counted, in dicts and lists alike
    assert redact({"a": secret, "b": secret, "c": [secret, secret, "x"]}, ["password"])[1] == 4


def test_json_text_with_leading_whitespace_is_still_redacted_by_key() -> None:
    r = CallToolResult(content=[TextContent(type="text", text='\n  {"password": "hunter2"}')])
    assert json.loads(_texts(redact_result(r, ["password"]))[0]) == {"password": REDACTED}


def test_text_after_a_non_text_item_is_redacted_and_kept() -> None:
    """Attack: an image before a JSON text item ended the loop: the text was dropped."""
    image = ImageContent(type="image", data="aGk=", mime_type="image/png")
    r = CallToolResult(content=[image, TextContent(type="text", text='{"token": "t"}'), image])
    out = redact_result(r, ["token"])
    assert len(out.content) == 3 and out.content[0] is image and out.content[2] is image
    assert json.loads(_text(out.content[1])) == {"token": REDACTED}


def test_a_key_without_words_matches_no_rule() -> None:
    out, n = redact({"": "a", "--": "b", "password": "c"}, ["password"])
    assert n == 1 and out == {"": "a", "--": "b", "password": REDACTED}


# --- the upstream's and the audit's copies of a call's arguments in one pass (redact_with_audit)

# a later pattern's replacement leaves an earlier pattern's match: scrubbing is not idempotent,
# so the audit's copy (scrub_values of the redacted arguments) differs from the upstream's
_TWICE = "AIza" + "F" * 35 + "ghp_" + "E" * 36


def _two_calls(doc: Any, rules: list[str]) -> tuple[Any, Any]:
    """What the policy step did before: ``redact`` (when there are rules), then ``scrub_values``."""
    out = redact(doc, rules)[0] if rules else doc
    return out, scrub_values(out)


DOCS: list[Any] = [
    {},
    {"message": "hi", "n": 3, "f": 0.5, "ok": True, "none": None},
    {"message": _TWICE, "token": "t", "headers": {"Authorization": "Bearer " + "a" * 20, "accept": "x"}},
    {"list": [_TWICE, {"password": "pw", "inner": [1, "sk-" + "B" * 24]}, [], [[_TWICE]]]},
    {"prose": "key sk-" + "C" * 30 + " and AKIA" + "D" * 16 + " end", "deep": {"a": {"b": {"c": _TWICE}}}},
    [_TWICE, "plain"],
    _TWICE,
]
RULES: list[list[str]] = [
    [],
    ["token", "password"],
    ["/headers/authorization", "/list/1/inner/1"],
    ["nothing"],
]


@pytest.mark.parametrize("rules", RULES)
def test_the_upstream_and_audit_copies_are_those_of_redact_then_scrub_values(rules: list[str]) -> None:
    for doc in DOCS:
        before = copy.deepcopy(doc)
        upstream, audit = redact_with_audit(doc, rules)
        assert (upstream, audit) == _two_calls(before, rules)
        assert canonical_details({"a": audit}) == canonical_details({"a": _two_calls(before, rules)[1]})
        assert doc == before  # the caller's arguments are never edited
        if rules and isinstance(doc, dict | list):
            assert upstream is not doc
    assert redact_with_audit({"m": _TWICE}, ["x"]) == (
        {"m": REDACTED + "ghp_" + "E" * 36},
        {"m": REDACTED * 2},
    )


def test_the_audit_copy_shares_no_container_with_the_upstreams() -> None:
    doc = {"a": {"b": ["x"]}, "c": [{"d": 1}]}
    for rules in ([], ["zzz"]):
        upstream, audit = redact_with_audit(doc, rules)
        audit["a"]["b"].append("y")
        audit["c"][0]["d"] = 2
        assert upstream == {"a": {"b": ["x"]}, "c": [{"d": 1}]} == doc


class _Dict(dict[str, Any]):
    pass


def _irregular() -> list[Any]:
    shared = [_TWICE]
    return [
        {"a": shared, "b": shared},  # shared: deepcopy keeps the sharing, the scrub sees it twice
        {"t": (_TWICE, 1)},  # a tuple (no JSON parser makes one)
        {"d": _Dict(token="x", m=_TWICE)},
        {1: _TWICE, "b": b"bytes"},
        {"s": type("S", (str,), {})(_TWICE)},
    ]


@pytest.mark.parametrize("rules", RULES)
def test_what_is_not_a_tree_of_json_values_takes_the_two_calls(rules: list[str]) -> None:
    for doc, again in zip(_irregular(), _irregular(), strict=True):
        upstream, audit = redact_with_audit(doc, rules)
        expected = _two_calls(again, rules)
        assert (upstream, audit) == expected
        assert [type(v) for v in _leaves(audit)] == [type(v) for v in _leaves(expected[1])]
    # with the sharing kept, a shared string is scrubbed twice in both copies
    shared = [_TWICE]
    for rules in RULES:
        upstream, audit = redact_with_audit({"a": shared, "b": shared}, rules)
        assert audit["a"] is audit["b"] and (upstream["a"] is upstream["b"])  # as deepcopy keeps them
    assert redact_with_audit({"a": shared, "b": shared}, ["x"])[0] == {
        "a": [REDACTED * 2],
        "b": [REDACTED * 2],
    }


class _Key:
    """A key ``copy.deepcopy`` copies (a new object: equal to no other)."""


def test_a_key_that_is_not_a_string_is_copied_as_deepcopy_copies_it() -> None:
    key = _Key()
    for rules in RULES:
        upstream, audit = redact_with_audit({"d": {key: "x"}}, rules)
        assert (key in upstream["d"]) is (not rules)  # deepcopy made another key when it copied
        assert key not in audit["d"] and len(audit["d"]) == 1


def _leaves(doc: Any) -> list[Any]:
    if isinstance(doc, dict):
        return [doc, *(x for v in doc.values() for x in _leaves(v))]
    if isinstance(doc, list | tuple):
        return [doc, *(x for v in doc for x in _leaves(v))]
    return [doc]


def test_a_cycle_fails_as_the_two_calls_do() -> None:
    doc: dict[str, Any] = {"m": "x"}
    doc["self"] = doc
    for rules in ([], ["x"]):
        with pytest.raises(RecursionError):
            _two_calls(doc, rules)
        with pytest.raises(RecursionError):
            redact_with_audit(doc, rules)


def test_a_measured_size_caps_as_a_measured_one() -> None:
    r = CallToolResult(content=[TextContent(type="text", text="a" * 300)], structured_content={"k": "v" * 50})
    size = result_size(r)
    for cap in (size, size - 1, 100, 0):
        assert cap_result(r, cap, size) == cap_result(r, cap)
    assert cap_result(r, size, size) is r


def test_a_tree_of_json_values_is_copied_without_deepcopy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of redact_with_audit and audit_copy: a request's arguments take the one-walk
    path (what they return is the two calls' either way: the tests above)."""
    pairs = {tuple(rules): [_two_calls(doc, rules) for doc in DOCS] for rules in RULES}
    audits = [scrub_values(doc) for doc in DOCS]

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("deepcopy called for a tree of JSON values")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    for rules, expected in pairs.items():
        assert [redact_with_audit(doc, list(rules)) for doc in DOCS] == expected
    assert [audit_copy(doc) for doc in DOCS] == audits


# --- rule lists compiled once (compile_rules), and the keys each one has met


def test_a_rule_list_is_compiled_once_in_its_order() -> None:
    rules = ("/b/0", "Api-Key", "/a~1b", "--", "/", "token")
    compiled = compile_rules(rules)
    assert compile_rules(tuple(rules)) is compiled
    assert compiled.keys == (("api", "key"), ("token",))  # a rule without words names no key
    assert compiled.pointers == (("b", "0"), ("a/b",))  # the bare "/" is not a rule


def test_a_remembered_key_gives_the_same_answer_and_only_for_its_own_rules() -> None:
    """Attack: a key remembered as matching one rule list was redacted under another (or a key
    remembered as clean went through in clear when met again)."""
    doc = {"token": "t", "password": "p", "note": "n"}
    for _ in range(2):  # the second time every key is remembered
        assert redact(doc, ["token"]) == ({**doc, "token": REDACTED}, 1)
        assert redact(doc, ["password"]) == ({**doc, "password": REDACTED}, 1)
        assert redact({"a": [{"token": "x"}]}, ["token"])[0] == {"a": [{"token": REDACTED}]}
    compiled = compile_rules(("token",))
    assert compiled.hits["token"] is True and compiled.hits["password"] is False


def test_the_keys_remembered_are_bounded_in_number_and_length() -> None:
    compiled = compile_rules(("secret_bound",))
    compiled.hits.clear()
    long_key = "k" * HITS_KEY_CHARS
    redact({long_key: 1, long_key + "x": 2, "x" * HITS_KEY_CHARS + "_secret_bound": 3}, ["secret_bound"])
    assert set(compiled.hits) == {long_key}  # the longer ones are matched every time, not kept
    assert redact({"y" * HITS_KEY_CHARS + "_secret_bound": 3}, ["secret_bound"])[1] == 1
    compiled.hits.clear()
    for i in range(HITS_KEYS):
        redact({f"k{i}": 1}, ["secret_bound"])
    assert len(compiled.hits) == HITS_KEYS
    redact({"one_more": 1, "secret_bound": 2}, ["secret_bound"])
    assert compiled.hits == {"one_more": False, "secret_bound": True}  # full: forgotten, then kept


def test_a_redacted_json_text_that_would_not_be_utf8_refuses_the_result() -> None:
    """Attack: a result's text is JSON holding the escape \\ud800 (valid UTF-8 text on the wire;
    ``json.loads`` makes a lone surrogate of it). Redacted and written again it is not valid
    UTF-8: the call failed with an internal error. Now refused, naming where."""
    bad = '{"api_token": "s", "x": ["ok", "\\ud800"]}'
    r = CallToolResult(content=[TextContent(type="text", text="fine"), TextContent(type="text", text=bad)])
    with pytest.raises(PolicyDenied) as refused:
        redact_result(r, ["api_token"])
    assert "/content/1/text" in refused.value.reasons[0] and "/x/1" in refused.value.reasons[0]
    # nothing to redact: the text passes unchanged (it is valid UTF-8 as it is)
    assert redact_result(r, ["password"]).content[1] is r.content[1]


# -- red team (/tmp/rt-call): spellings and places that passed the rules -----------------------


def test_a_pointer_redacts_every_spelling_of_its_key_not_just_the_first() -> None:
    # r2: {"authorization": "decoy", "AUTHORIZATION": secret} sent the second raw
    doc = {"headers": {"authorization": "decoy", "AUTHORIZATION": "s1", "Authori\u200bzation": "s2"}}
    out, n = redact(doc, ["/headers/authorization"])
    assert n == 3 and set(out["headers"].values()) == {REDACTED}
    upstream, audit = redact_with_audit(doc, ["/headers/authorization"])
    assert set(upstream["headers"].values()) == {REDACTED} and set(audit["headers"].values()) == {REDACTED}
    # at every level of the pointer too
    doc2 = {
        "Headers": {"authorization": "s1"},
        "HEADERS": {"Authorization": "s2"},
        "other": {"authorization": 1},
    }
    out2, n2 = redact(doc2, ["/headers/authorization"])
    assert n2 == 2 and out2["other"] == {"authorization": 1}
    assert out2["Headers"] == {"authorization": REDACTED} and out2["HEADERS"] == {"Authorization": REDACTED}


@pytest.mark.parametrize(
    "key", ["clé_apiToken", "clé-apiToken", "ключApiToken", "über_APIToken", "Ωmega_apiToken"]
)
def test_a_non_ascii_letter_does_not_turn_off_the_camel_case_split(key: str) -> None:
    # r7: "clé_apiToken" split as ["clé", "apitoken"] and was not redacted by "api_token"
    out, n = redact({"conf": {key: "s", "x_apiToken": "s"}}, ["api_token"])
    assert n == 2 and out == {"conf": {key: REDACTED, "x_apiToken": REDACTED}}


def test_non_ascii_keys_split_into_words_by_case() -> None:
    assert _words("clé_apiToken") == ("clé", "api", "token")
    assert _words("ÜberHTTPServer2") == ("über", "http", "server", "2")
    assert _words("max_tökens") == ("max", "tökens")  # no split inside a lower-case word


_KEY_SECRET = "sk-proj-" + "A" * 32


def test_a_secret_used_as_a_key_is_not_in_the_audits_copy() -> None:
    # r3: {"env": {"sk-proj-...": true}} was recorded with the secret as a key
    doc = {"env": {_KEY_SECRET: True, "ghp_" + "b" * 36: 1, "[REDACTED]": 2}, "plain": {"k": "v"}}
    for rules in ([], ["password"], ["/env/x"]):
        upstream, audit = redact_with_audit(doc, rules)
        assert _KEY_SECRET not in json.dumps(audit) and "ghp_" not in json.dumps(audit)
        assert sorted(audit["env"]) == ["[REDACTED]", "[REDACTED]#2", "[REDACTED]#3"]
        assert sorted(map(str, audit["env"].values())) == ["1", "2", "True"]
        assert audit["plain"] == {"k": "v"}
        assert (
            _KEY_SECRET in upstream["env"]
        )  # the upstream's keys are the caller's: only the record is scrubbed
    assert _KEY_SECRET not in json.dumps(audit_copy(doc)) and _KEY_SECRET not in json.dumps(scrub_values(doc))
    assert scrub_values({_KEY_SECRET: 1}) == {"[REDACTED]": 1}
