"""bench/policy.py's step overhead runs the real policy step over the shipped policy: the
step's own cost, with the data's per-minute limits out of the way (a limit hit ended the
benchmark with ``RateLimited`` after the counters' API changed, unseen outside `make bench`)."""

from __future__ import annotations

from bench.policy import step_overhead
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.loader import discover_files
from tests.conftest import ROOT


def test_the_step_overhead_runs_past_the_datas_per_minute_limit() -> None:
    engine = EmbeddedEngine(discover_files(ROOT / "policies.rego"))
    assert engine.load()
    out = step_overhead(engine, 200)  # more calls than the shipped data's 60 a minute for admin
    assert out["with_policy_step_p50_us"] > 0 and out["bare_endpoint_p50_us"] > 0  # it ran to its end
