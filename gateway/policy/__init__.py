"""Rego policy decisions: embedded regorus by default, a real OPA server when configured.

Public API (what the gateway core calls):

- ``build_engine(config, events) -> PolicyEngine``: loads ``config.policy`` (and starts hot
  reload); ``engine.decide(input)`` / ``await engine.adecide(input)`` -> ``Decision``.
- ``input_for_call(call, counters)`` / ``build_input(...)``: the input document.
- ``CallCounters``: recent-call windows and the per-principal+tool rate limiter.
- ``gateway.steps.policy.PolicyStep`` and ``filter_listing`` use all of the above.
"""

from gateway.errors import PolicyLoadError
from gateway.policy.decision import CONDITIONS, validate_decision
from gateway.policy.engine import EmbeddedEngine, PolicyEngine, build_engine, evaluate
from gateway.policy.inputdoc import CallCounters, build_input, input_for_call
from gateway.policy.loader import (
    PolicyBundle,
    PolicyFiles,
    discover_files,
    load_checked,
    run_tests,
)
from gateway.policy.remote import RemoteEngine

__all__ = [
    "CONDITIONS",
    "CallCounters",
    "EmbeddedEngine",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyFiles",
    "PolicyLoadError",
    "RemoteEngine",
    "build_engine",
    "build_input",
    "discover_files",
    "evaluate",
    "input_for_call",
    "load_checked",
    "run_tests",
    "validate_decision",
]
