"""facts' server_request branch (session 51): an upstream's request to the client is decided
in `facts`, exactly as real OPA's general rules decide it."""

from __future__ import annotations

import random
from typing import Any

from tests.policy.parity import decide, engines_and_cases, facts_fields, opa_decide


def test_server_requests_take_the_fast_path_and_decide_asopa_decide() -> None:
    """An upstream's request to the client (kind server_request) with a string server and
    method is decided by `facts`; variants of the case file's (other methods, servers, token
    counts, URL modes, a principal at its hourly cap, fields missing or of another type)
    decide exactly as real OPA's general rules (no index) decide them."""
    engine, opa, cases = engines_and_cases("server_request")
    for inp in cases:
        well_formed = isinstance(inp.get("server"), str) and isinstance(inp.get("method"), str)
        fields = {"refusals", "granted", "conditions"} if well_formed else None
        assert facts_fields(engine, inp) == fields, inp
    base = cases[0]
    rng = random.Random(51)
    odd: list[dict[str, Any]] = [
        {"server": None},
        {"server": 3},
        {"method": ["roots/list"]},
        {"method": "roots/list"},
        {"method": "elicitation/create", "request": {"mode": "url", "url": "https://evil.example/x"}},
        {"method": "elicitation/create", "request": {"mode": "url", "url": "https://example.com/x"}},
        {"method": "elicitation/create", "request": {"mode": "form"}},
        {"request": {"maxTokens": "10"}},
        {"request": {"maxTokens": -1}},
        {"request": None},
        {"server": "fs"},
        {"server": "nobody"},
        {"context": {"calls_last_hour": 10**6}},
        {"action": "list"},
        {"principal": {"roles": []}},
    ]
    inputs = [{**c, **o} for c in cases for o in rng.sample(odd, 5)] + [{**base, **o} for o in odd]
    for o in ({"server": None}, {"method": 3}):
        assert facts_fields(engine, {**base, **o}) is None  # the general rules decide
    diffs = [(i, a, b) for i in inputs if (a := decide(engine, i)) != (b := opa_decide(opa, i))]
    assert diffs == []
