"""WarnUnsafe in-process: one warning per call for each protection turned off, and for the
anonymous principal; nothing when nothing is off. The gateway-level tests run `symbi`
subprocesses (unattributable to mutation testing, scripts/mutate.py)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from gateway.chain import build_chain
from gateway.config.model import UnsafeOption
from gateway.context import CallContext, Principal
from gateway.errors import PolicyDenied
from gateway.steps.unsafe import WarnUnsafe

OFF = [
    UnsafeOption(key="verification.unsafe_off", effect="tool signatures are not checked"),
    UnsafeOption(key="audit.unsafe_no_sign", effect="the audit log is not signed"),
]


def run(step: WarnUnsafe, call: CallContext, endpoint: Any = None) -> Any:
    reached: list[CallContext] = []

    async def ep(c: CallContext) -> str:
        reached.append(c)
        if endpoint is not None:
            raise endpoint
        return "result"

    async def go() -> Any:
        return await build_chain([step], ep)(call)

    result = anyio.run(go)
    assert reached == [call]
    return result


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "symbi.unsafe" and r.levelno == logging.WARNING
    ]


def test_every_call_warns_naming_each_option_the_call_and_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "symbi.unsafe")
    step = WarnUnsafe(OFF)
    for target in ("up__a", "up__b"):
        assert (
            run(step, CallContext(principal=Principal(id="alice"), kind="tools/call", target=target))
            == "result"
        )
    got = warnings(caplog)
    assert len(got) == 2  # once per call, never only at start
    for msg, target in zip(got, ("up__a", "up__b"), strict=True):
        assert msg.startswith("UNSAFE: tools/call ")
        for needle in (
            target,
            "alice",
            "verification.unsafe_off",
            "tool signatures are not checked",
            "audit.unsafe_no_sign",
        ):
            assert needle in msg


def test_nothing_off_and_a_known_caller_means_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "symbi.unsafe")
    assert (
        run(WarnUnsafe([]), CallContext(principal=Principal(id="alice"), kind="tools/call", target="t"))
        == "result"
    )
    assert caplog.records == []


def test_the_anonymous_principal_is_warned_about_on_every_call(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "symbi.unsafe")
    anon = Principal(id="anonymous", kind="anonymous")
    for _ in range(2):
        run(WarnUnsafe([]), CallContext(principal=anon, kind="resources/read", target="file:///x"))
    got = warnings(caplog)
    assert len(got) == 2
    assert all("resources/read file:///x" in m and "http.unsafe_anonymous_principal" in m for m in got)


def test_an_anonymous_call_under_unsafe_options_gets_both_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "symbi.unsafe")
    anon = Principal(id="anonymous", kind="anonymous")
    with pytest.raises(PolicyDenied):  # the inner step's error passes through unchanged
        run(
            WarnUnsafe(OFF[:1]),
            CallContext(principal=anon, kind="tools/call", target="t"),
            PolicyDenied("no"),
        )
    got = warnings(caplog)
    assert len(got) == 2
    assert "verification.unsafe_off" in got[0] and "http.unsafe_anonymous_principal" in got[1]
