"""facts' prompts/get branch (session 52): a well-formed prompt's arguments are checked in
the branch itself, not by the general rule prompt_arg_deny, and it decides exactly as real
OPA's general rules do (test_index_parity.py holds the other kinds' fast paths)."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from tests.policy.conftest import POLICY
from tests.policy.parity import decide, engines_and_cases, opa_decide


def _prompt_fast(engine: Any, inp: dict[str, Any]) -> bool:
    """Whether ``inp`` is decided by facts' prompt branch: the one that checks the arguments
    inline, so a stand-in value of the general rule prompt_arg_deny does not reach its
    refusals (the general pieces' branch asks that rule and shows the stand-in)."""
    engine.set_input(inp)
    query = 'x := data.symbi.facts.refusals with data.symbi.prompt_arg_deny as {"stand-in"}'
    rows = engine.eval_query(query)["result"]
    return bool(rows) and "stand-in" not in rows[0]["bindings"]["x"]


def test_prompts_take_the_fast_path_and_decide_as_opa() -> None:
    """A prompt (kind prompts/get) with a string target and an arguments object (or none),
    as a call or a listing, is decided by facts' prompt branch; variants of the case file's
    (other principals and sources, unknown prompts, redacted and checked arguments, answers,
    a principal at its hourly cap, fields missing or of another type) decide exactly as real
    OPA's general rules (no index) decide them."""
    engine, opa, cases = engines_and_cases("prompts/get")
    for inp in cases:
        well_formed = isinstance(inp.get("target"), str) and isinstance(inp.get("arguments", {}), dict)
        assert _prompt_fast(engine, {**inp, "action": "call"}) == well_formed, inp
    base = {**cases[0], "action": "call"}
    # principals as the gateway sends them (every field; issuer null but for a jwt's)
    key = {**base["principal"], "source": "key", "roles": [], "issuer": None}
    stdio = {**key, "source": "stdio"}
    capped = [{**key, "id": "ci-bot"}, {**stdio, "id": "local"}]
    odd: list[dict[str, Any]] = [
        {"target": "time__p"},
        {"target": "evil__x"},
        {"target": "unknown"},
        {"target": ""},
        {"target": None},
        {"target": 5},
        {"arguments": {"path": "/srv/symbi/a", "api_key": "k"}},
        {"arguments": {"paths": ["/srv/symbi/a", "/etc/shadow"], "token": 3}},
        {"arguments": {"paths": []}},
        {"arguments": {"source": "/srv/symbi/../etc"}},
        {"arguments": {"path": "/srv/symbi/a\\..\\..\\etc"}},  # under the root but for a backslash
        {"arguments": {"path": "/srv/symbi/a\u0000b"}},  # and for a NUL
        {"arguments": {"path": "/srv/symbi/./a"}},
        {"arguments": {"url": "HTTPS://EXAMPLE.COM/"}},  # the host in lower case
        {"arguments": {"url": "http://example.com@evil.com/"}},
        # decided by the data's glob `*.example.com` alone, "." its delimiter: one label only
        {"arguments": {"url": "https://sub.example.com/"}},
        {"arguments": {"url": "https://a.b.example.com/"}},
        {"arguments": {"uri": ["https://example.com", 7]}},
        {"arguments": {"endpoint": "file:///etc/passwd"}},
        {"arguments": {}},
        {"arguments": None},
        {"arguments": "x"},
        {"arguments": ["x"]},
        {"input_responses": {"q1": {"action": "accept", "content": {"path": "/etc/passwd"}}}},
        {"input_responses": {"q1": {"action": "accept", "content": {"url": "https://example.com/"}}}},
        {"input_responses": "x"},
        {"context": {"calls_last_hour": 10**6}},
        {"context": {"calls_last_hour": 0}},
        # at and just below the caps of the data (ci-bot's 100, local's 5000), for each principal
        *({"principal": p, "context": {"calls_last_hour": n}} for p in capped for n in (99, 100, 4999, 5000)),
        {"context": None},
        {"action": "list"},
        {"action": None},
        {"principal": {**key, "id": "nobody"}},
        {"principal": {**key, "id": "ci-bot"}},
        {"principal": {**stdio, "id": "local", "roles": ["admin"]}},
        {"principal": {**key, "id": "sub-1", "source": "jwt", "issuer": "https://login.example.com/"}},
        {"principal": {**key, "id": "anon", "source": "anonymous", "roles": ["readonly"]}},
        {"principal": {**key, "id": "x", "source": "other", "roles": ["developer"]}},
        {"principal": {**key, "id": "alice"}},
        {"principal": {**key, "id": "auditor", "roles": ["admin"]}},
        {"principal": {"roles": []}},
    ]
    rng = random.Random(52)
    inputs = [{**c, **o} for c in cases for o in rng.sample(odd, 8)] + [{**base, **o} for o in odd]
    inputs += [{**i, **o} for i in inputs[-len(odd) :] for o in rng.sample(odd, 3)]
    slow: list[dict[str, Any]] = [{"target": None}, {"arguments": "x"}, {"principal": {"roles": []}}]
    for o in slow:
        assert not _prompt_fast(engine, {**base, **o})  # the other branches or general rules
    # every well-formed input takes the branch (a string target, an arguments object or none,
    # the principal as the gateway sends it, the hour's count): the parity below is its own
    taken = 0
    for i in inputs:
        p, ctx = i.get("principal") or {}, i.get("context") or {}
        if (
            isinstance(i.get("target"), str)
            and isinstance(i.get("arguments", {}), dict)
            and p.get("source") in ("stdio", "key", "anonymous", "jwt")
            and {"id", "issuer"} <= p.keys()
            and "calls_last_hour" in ctx
        ):
            assert _prompt_fast(engine, i), i
            taken += 1
    assert taken >= len(inputs) // 2, (taken, len(inputs))
    diffs = [(i, a, b) for i in inputs if (a := decide(engine, i)) != (b := opa_decide(opa, i))]
    assert diffs == []


# The general rules facts' prompt branch writes out again inline (for speed: asking them cost
# more than the branch saves). A change to any of them is a change the branch must make too:
# this digest of their text makes that change fail here, to be copied, then the digest updated.
_MIRRORED = (
    "access_deny",
    "prompt_ok",
    "prompt_arg_deny",
    "prompt_redact_args",
    "arg_values",
    "arg_refused",
    "path_ok",
    "url_host",
    "url_refused",
    "host_ok",
    "answer_refusals",
    "volume_deny",
    # who the principal is and what it is granted, and what it is to call
    "action",
    "is_call",
    "principal_id",
    "principals_of",
    "principal_entry",
    "roles",
    "role_entry",
    "patterns",
    "matches_any",
    "other_permitted",
    "other_conditions",
)
_MIRRORED_SHA256 = "e797b60768f05b5cc429ab38680ef7cb7b9c2002d2d3eb62be09c3b6333991fb"


def _rule_texts(text: str, names: tuple[str, ...]) -> str:
    """Every rule (each of its definitions, their ``else`` parts) of ``names``, as written:
    from its head at the start of a line until its brackets close."""
    head = re.compile(rf"^({'|'.join(names)})\b")
    out: list[str] = []
    depth, taking = 0, False
    for line in text.splitlines():
        if depth == 0:
            taking = bool(head.match(line)) or (taking and line.startswith("else"))
        if taking:
            out.append(line)
            depth += sum(line.count(c) for c in "({[") - sum(line.count(c) for c in ")}]")
    return "\n".join(out)


def test_the_rules_the_prompt_branch_mirrors_are_as_it_mirrors_them() -> None:
    text = _rule_texts(POLICY.read_text(), _MIRRORED)
    for name in _MIRRORED:
        assert re.search(rf"^{name}\b", text, re.M), name  # each still defined at the top level
    assert hashlib.sha256(text.encode()).hexdigest() == _MIRRORED_SHA256, (
        "a rule facts' prompts/get branch writes out inline changed: make the same change "
        "there (the tools/call branch has its own copy of the argument checks), then update "
        "_MIRRORED_SHA256"
    )
