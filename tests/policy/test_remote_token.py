"""A remote OPA server that requires a token (``opa run --server --authentication=token
--authorization=basic``): the gateway sends ``policy.token`` on every decision and push, and
warns at start of an OPA server that lets anyone in. Without a token, any process reaching
OPA's port (an upstream server on the host's loopback) could replace the policy.

The server is the OPA-compatible stand-in (``tests/policy/opa_server.py``: the real OPA Go
engine behind OPA's Data API, with OPA's token check); no registry reachable here ships `opa`."""

from __future__ import annotations

import logging

import httpx
import pytest

from gateway.config.load import build_config
from gateway.config.sections import PolicySection
from gateway.errors import ConfigError, PolicyError
from gateway.policy.push import push
from gateway.policy.remote import RemoteEngine, remote_engine, warn_open_opa
from tests.conftest import POLICY, TEST_POLICY_DATA
from tests.policy.opa_server import OpaServer
from tests.policy.test_push import INPUT

TOKEN = "opa-s3cret-token"


def _section(url: str, token: str | None) -> PolicySection:
    doc = {"engine": "opa", "url": url, "path": str(POLICY), "data": str(TEST_POLICY_DATA)}
    return build_config({"policy": doc | ({"token": token} if token else {})}).policy


def test_push_and_decisions_carry_the_token_and_a_stranger_cannot_rewrite_the_policy() -> None:
    with OpaServer(None, token=TOKEN) as server:
        # what an upstream on the same host would try: OPA refuses it without the token
        r = httpx.put(f"{server.url}/v1/policies/evil", content=b"package symbi\ndecision := {}\n")
        assert r.status_code == 401 and server.policies == {}
        with pytest.raises(PolicyError):
            push(build_config({"policy": _section(server.url, None).model_dump()}))
        push(build_config({"policy": _section(server.url, TOKEN).model_dump()}))
        assert set(server.policies) == {"symbi/policies.rego"}
        engine = remote_engine(_section(server.url, TOKEN))
        try:
            assert engine.decide(INPUT).allow
        finally:
            engine.close()


def test_a_decision_refused_for_credentials_is_a_deny_naming_the_token() -> None:
    with OpaServer(None, token=TOKEN) as server:
        push(build_config({"policy": _section(server.url, TOKEN).model_dump()}))
        d = RemoteEngine(server.url).decide(INPUT)
        assert not d.allow and any("policy.token" in r for r in d.reasons)


def test_an_opa_server_that_lets_anyone_in_is_warned_of_at_start(caplog: pytest.LogCaptureFixture) -> None:
    with OpaServer(None) as open_server, OpaServer(None, token=TOKEN) as guarded:
        with caplog.at_level(logging.WARNING, logger="symbi.policy"):
            assert warn_open_opa(_section(open_server.url, None))
            assert not warn_open_opa(_section(guarded.url, TOKEN))
        assert sum(open_server.url in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "policy",
    [
        {"token": "t"},  # the embedded engine has no server to send it to
        {"engine": "opa", "url": "http://opa.example:8181", "token": "t"},  # readable on the way
    ],
)
def test_a_token_that_would_go_nowhere_or_in_clear_text_is_refused(policy: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        build_config({"policy": policy})


def test_the_token_comes_from_the_environment_too() -> None:
    cfg = build_config(
        {"policy": {"engine": "opa", "url": "https://opa.example"}}, environ={"SYMBI_POLICY_TOKEN": TOKEN}
    )
    assert cfg.policy.token == TOKEN and TOKEN not in repr(cfg)
