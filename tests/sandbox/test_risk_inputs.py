"""The risk pick is fed the call's real inputs, so ``security.default_sandbox_tier`` and what
the code asks for change the tier (they did nothing while the pick was fed constants)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sandbox import assess_tier
from gateway.sandbox.inputs import needs_of, trust_of
from gateway.sandbox.types import SandboxRequest, ToolNeeds
from tests.conftest import write_config
from tests.sandbox.test_risk import all_up
from tests.server._clients import stdio_session


def _py(code: str, **kw: object) -> SandboxRequest:
    return SandboxRequest(code=code, **kw)  # type: ignore[arg-type]


def _sh(cmd: str) -> SandboxRequest:
    return SandboxRequest(command=("/bin/sh", "-c", cmd))


def test_what_the_code_asks_for_is_read() -> None:
    assert needs_of(_py("print(1)")) == ToolNeeds()
    assert needs_of(_py("import socket\nsocket.create_connection(('x', 1))")).network
    assert needs_of(_py("from urllib.request import urlopen")).network
    assert needs_of(_py("open('/etc/passwd').read()")).filesystem
    assert needs_of(_py("print(1)", files={"a.txt": b"x"})).filesystem
    assert needs_of(_py("import boto3")).external_apis == ("boto3",)
    assert needs_of(_sh("curl http://example.com")).network
    assert needs_of(_sh("cat /etc/shadow")).filesystem
    assert needs_of(_sh("echo hi")) == ToolNeeds()


def test_tool_annotations_are_read() -> None:
    assert needs_of(_py("print(1)"), {"openWorldHint": True}).network
    assert needs_of(_py("print(1)"), {"destructiveHint": True}).filesystem
    assert needs_of(_py("print(1)"), {"openWorldHint": False, "destructiveHint": False}) == ToolNeeds()


def test_the_callers_kind_sets_the_trust() -> None:
    assert trust_of("agent") == "untrusted"
    assert (
        trust_of("anonymous") == "untrusted"
        and trust_of(None) == "untrusted"
        and trust_of("robot") == "untrusted"
    )
    assert trust_of("user") is None and trust_of("service") is None and trust_of("admin") is None


def _pick(request: SandboxRequest, kind: str, default_tier: str, policy_min_tier: str | None = None) -> str:
    return assess_tier(
        needs_of(request),
        code_trust=trust_of(kind),
        data_sensitivity="internal",
        policy_min_tier=policy_min_tier,
        default_tier=default_tier,
        available=all_up,
    )


def test_default_sandbox_tier_is_the_floor_for_a_persons_code() -> None:
    assert _pick(_py("print(1)"), "user", "bwrap") == "bwrap"
    assert _pick(_py("print(1)"), "user", "docker") == "docker"
    assert _pick(_py("print(1)"), "user", "gvisor") == "gvisor"
    # asking for more climbs above the default
    assert _pick(_py("import socket"), "user", "bwrap") == "docker"
    assert _pick(_py("import socket\nopen('/etc/hosts')"), "user", "bwrap") == "gvisor"
    # an agent's code: gVisor whatever the default
    assert _pick(_py("print(1)"), "agent", "bwrap") == "gvisor"
    # the policy's floor still wins
    assert _pick(_py("print(1)"), "user", "bwrap", policy_min_tier="docker") == "docker"


def _cfg(tmp_path: Path, default_tier: str) -> Path:
    # roles "trusted": the default policy's floor for code tools is docker (gvisor otherwise)
    return write_config(
        tmp_path,
        f"""
        [gateway.stdio_principal]
        id = "local"
        roles = ["tester", "trusted"]
        [security]
        default_sandbox_tier = "{default_tier}"
        [sandbox]
        code_tools = true
        """,
    )


@pytest.mark.anyio
@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.parametrize(
    "default_tier,plain,asking", [("docker", "docker", "gvisor"), ("gvisor", "gvisor", "gvisor")]
)
async def test_default_sandbox_tier_changes_where_a_call_runs(
    tmp_path: Path, default_tier: str, plain: str, asking: str
) -> None:
    async with stdio_session(_cfg(tmp_path, default_tier)) as s:
        r = await s.call_tool("sandbox__run_python", {"code": "print(6 * 7)"})
        assert not r.is_error, r
        assert r.structured_content["tier"] == plain
        r = await s.call_tool(
            "sandbox__run_python",
            {"code": "import socket\nprint(open('/etc/hostname').read())"},
        )
        assert r.structured_content["tier"] == asking
