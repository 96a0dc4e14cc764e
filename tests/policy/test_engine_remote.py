"""Remote-OPA mode: the gateway asks an OPA server over the Data API (HTTPS with a private
CA here). The server is the real OPA engine behind an OPA-compatible endpoint on 127.0.0.1
(``opa_server.py``); it stands in for the `opa` binary, which no reachable registry ships."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.policy.cases import Case, decision_dict
from gateway.policy.engine import EmbeddedEngine
from gateway.policy.remote import RemoteEngine
from tests.policy.conftest import opa_engine
from tests.policy.opa_server import OpaServer


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    other = trustme.CA()  # a CA the server's cert does not chain to
    paths["other_ca"] = d / "other.pem"
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    return paths


@pytest.fixture(scope="module")
def opa(tls: dict[str, Path], cases: list[Case]) -> Iterator[OpaServer]:
    engine = opa_engine()
    # OPA compiles the policy at its first evaluation (seconds on a loaded machine, under
    # mutation testing's nice 19): done here, not inside the first test's 2 s timeout
    engine.eval_document("symbi.decision", cases[0].input)
    with OpaServer(engine, certfile=str(tls["cert"]), keyfile=str(tls["key"])) as server:
        yield server


@pytest.fixture
def remote(opa: OpaServer, tls: dict[str, Path]) -> Iterator[RemoteEngine]:
    opa.delay_s = 0.0
    # the tests of answers: a timeout long enough for a starved OPA server (the mutation
    # runs' nice 19 on a loaded machine took over 2 s); test_timeout_denies tests the timeout
    eng = RemoteEngine(opa.url, timeout_s=30.0, tls_ca=tls["ca"])
    yield eng
    eng.close()


def find(cases: list[Case], name: str) -> Case:
    return next(c for c in cases if c.name == name)


def test_allow(remote: RemoteEngine, cases: list[Case]) -> None:
    c = find(cases, "code tool for a developer needs gVisor")
    d = remote.decide(c.input)
    assert d.allow is True and d.conditions["sandbox_tier"] == "gvisor"


def test_deny(remote: RemoteEngine, cases: list[Case]) -> None:
    c = find(cases, "userinfo trick: real host is evil.com")
    d = remote.decide(c.input)
    assert d.allow is False and list(d.reasons) == c.expected["reasons"]


def test_same_decisions_as_embedded_on_every_case(
    remote: RemoteEngine, repo_engine: EmbeddedEngine, cases: list[Case]
) -> None:
    diffs = [
        c.name
        for c in cases
        if decision_dict(remote.decide(c.input)) != decision_dict(repo_engine.decide(c.input))
    ]
    assert diffs == []


def test_async_path(remote: RemoteEngine, cases: list[Case]) -> None:
    async def both() -> list[bool]:
        ds = await asyncio.gather(*(remote.adecide(c.input) for c in cases[:8]))
        return [d.allow for d in ds]

    assert asyncio.run(both()) == [c.expected["allow"] for c in cases[:8]]


def test_timeout_denies(opa: OpaServer, tls: dict[str, Path], cases: list[Case]) -> None:
    allowed = find(cases, "time tool for the stdio principal").input
    # control: the same call allowed when OPA answers, by an engine that differs only in its
    # timeout (0.3 s is shorter than a starved OPA server's answer on a loaded machine)
    control = RemoteEngine(opa.url, timeout_s=30, tls_ca=tls["ca"])
    try:
        assert control.decide(allowed).allow is True
    finally:
        control.close()
    eng = RemoteEngine(opa.url, timeout_s=0.3, tls_ca=tls["ca"])
    try:
        opa.delay_s = 2.0
        d = eng.decide(allowed)
        assert d.allow is False and d.reasons
        assert asyncio.run(eng.adecide(allowed)).allow is False
    finally:
        opa.delay_s = 0.0
        eng.close()


def test_undefined_decision_denies(opa: OpaServer, tls: dict[str, Path], cases: list[Case]) -> None:
    eng = RemoteEngine(opa.url, decision="data.symbi.no_such_rule", tls_ca=tls["ca"])
    try:
        d = eng.decide(find(cases, "time tool for the stdio principal").input)
        assert d.allow is False and d.reasons
    finally:
        eng.close()


def test_untrusted_certificate_denies(opa: OpaServer, tls: dict[str, Path], cases: list[Case]) -> None:
    eng = RemoteEngine(opa.url, tls_ca=tls["other_ca"])
    before = opa.requests
    try:
        assert eng.decide(find(cases, "time tool for the stdio principal").input).allow is False
    finally:
        eng.close()
    assert opa.requests == before  # the TLS handshake failed: no decision was asked


def test_nothing_listening_denies(cases: list[Case]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: connection refused
    eng = RemoteEngine(f"http://127.0.0.1:{port}", timeout_s=1.0)
    try:
        assert eng.decide(find(cases, "time tool for the stdio principal").input).allow is False
    finally:
        eng.close()


def test_endpoint_follows_the_decision_path() -> None:
    assert RemoteEngine("https://opa.local:8181/", decision="data.symbi.decision").endpoint == (
        "https://opa.local:8181/v1/data/symbi/decision"
    )


def test_malformed_answer_denies(tmp_path: Path, tls: dict[str, Path], cases: list[Case]) -> None:
    bad = opa_engine(
        'package symbi\nimport rego.v1\ndecision := {"allow": true, "reasons": [], "conditions": {"sudo": true}}\n',
        {},
    )
    with OpaServer(bad, certfile=str(tls["cert"]), keyfile=str(tls["key"])) as server:
        eng = RemoteEngine(server.url, tls_ca=tls["ca"])
        try:
            d = eng.decide(find(cases, "time tool for the stdio principal").input)
        finally:
            eng.close()
    assert d.allow is False and d.reasons


def test_build_engine_gives_the_configured_remote_engine(
    opa: OpaServer, tls: dict[str, Path], cases: list[Case]
) -> None:
    """[policy] engine = "opa": url, decision path, timeout and CA all reach the engine."""
    from gateway.config.model import Config
    from gateway.config.sections import PolicySection
    from gateway.policy.engine import build_engine

    opa.delay_s = 0.0
    eng = build_engine(
        Config(policy=PolicySection(engine="opa", url=opa.url + "/", tls_ca=tls["ca"], timeout_s=1.5))
    )
    try:
        assert isinstance(eng, RemoteEngine) and eng.endpoint == f"{opa.url}/v1/data/symbi/decision"
        assert (
            eng.decide(find(cases, "code tool for a developer needs gVisor").input).allow is True
        )  # CA trusted
    finally:
        eng.close()
        eng.close()  # closing twice is harmless
    other = build_engine(
        Config(policy=PolicySection(engine="opa", url="https://opa.local", decision="data.x.y"))
    )
    assert other.endpoint == "https://opa.local/v1/data/x/y"  # type: ignore[attr-defined]
    assert RemoteEngine("https://opa.local").endpoint == "https://opa.local/v1/data/symbi/decision"
    assert (
        RemoteEngine("https://opa.local", decision="symbi.other").endpoint
        == "https://opa.local/v1/data/symbi/other"
    )


HOURLY_CAP_REGO = """package symbi

import rego.v1

default decision := {"allow": false, "reasons": ["hourly cap reached"], "conditions": {}}

decision := {"allow": true, "reasons": [], "conditions": {}} if input.context.calls_last_hour < 3
"""


def test_an_hourly_cap_holds_for_concurrent_calls_decided_remotely() -> None:
    """A remote decision is awaited: calls of one principal made at once all wait for OPA
    together. Each must still see the calls reserved before it, else every one of them reads
    ``calls_last_hour == 0`` and a cap of 3 admits all 12 (the local rate limiter, real OPA)."""
    from gateway.chain import CallNext, build_chain
    from gateway.context import CallContext, Principal, ToolInfo
    from gateway.errors import PolicyDenied
    from gateway.state.limiter import LocalRateLimiter
    from gateway.steps.policy import PolicyStep

    who = Principal(id="local", kind="user", roles=("developer",))
    tool = ToolInfo(
        name="up__a",
        original_name="a",
        upstream="up",
        definition={"name": "a", "inputSchema": {"type": "object"}},
    )
    reached: list[str] = []

    async def upstream(call: CallContext) -> str:
        reached.append(call.target)
        return "ok"

    def call() -> CallContext:
        return CallContext(
            principal=who, kind="tools/call", target="up__a", arguments={}, session_id="s1", tool=tool
        )

    async def at_once(chain: CallNext) -> list[Any]:
        return await asyncio.gather(*(chain(call()) for _ in range(12)), return_exceptions=True)

    with OpaServer(opa_engine(HOURLY_CAP_REGO, {})) as server:
        remote = RemoteEngine(server.url, timeout_s=30.0)
        try:
            step = PolicyStep(remote)
            assert remote.decides_inline is False and isinstance(step.limiter, LocalRateLimiter)
            outcomes = asyncio.run(at_once(build_chain([step], upstream)))
        finally:
            remote.close()
    assert server.requests == 12  # every call was decided by OPA
    assert len(reached) == 3 and outcomes.count("ok") == 3
    assert [type(o) for o in outcomes if o != "ok"] == [PolicyDenied] * 9
    assert step.counters.principal_counts(who.qualified)[1] == 3  # the denied ones were given back
