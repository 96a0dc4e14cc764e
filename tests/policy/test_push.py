"""``symbi policy push`` to an OPA server, then decisions from it.

No ``opa`` binary is reachable from the registries here: the server is the OPA-compatible
stand-in (``tests/policy/opa_server.py``) whose engine is the real OPA Go engine
(opa-golib-python-bindings), built from exactly what was pushed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.config.load import build_config
from gateway.errors import ConfigError, PolicyError
from gateway.policy.push import push
from gateway.policy.remote import RemoteEngine
from tests.conftest import POLICY, SYMBI, TEST_POLICY_DATA, symbi_env, write_config
from tests.policy.opa_server import OpaServer

INPUT = {
    "principal": {"id": "tester", "kind": "user", "roles": ["tester"], "claims": {}},
    "kind": "tools/call",
    "action": "call",
    "target": "everything__echo",
    "tool": {
        "name": "everything__echo",
        "original_name": "echo",
        "upstream": "everything",
        "annotations": {},
        "verification": "verified",
        "code_tool": False,
    },
    "upstream": {"name": "everything", "transport": "stdio"},
    "arguments": {"message": "hi"},
    "context": {"calls_last_minute": 0, "calls_last_hour": 0, "tool_calls_last_minute": 0},
}


def _cfg(tmp_path: Path, url: str, policy: Path = POLICY) -> Path:
    return write_config(
        tmp_path,
        f"""
        [policy]
        engine = "opa"
        url = "{url}"
        path = "{policy}"
        data = "{TEST_POLICY_DATA}"
        """,
    )


def test_push_then_the_server_decides_with_the_pushed_policy(tmp_path: Path) -> None:
    with OpaServer(None) as server:
        before = RemoteEngine(server.url).decide(INPUT)
        assert not before.allow  # nothing pushed: undefined, deny
        r = subprocess.run(
            [str(SYMBI), "policy", "push", "--config", str(_cfg(tmp_path, server.url))],
            env=symbi_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert server.policies == {"symbi/policies.rego": POLICY.read_text()}
        assert server.data == json.loads(TEST_POLICY_DATA.read_text())
        after = RemoteEngine(server.url).decide(INPUT)
        assert after.allow, after.reasons


def test_a_broken_policy_is_refused_by_the_server_and_nothing_changes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rego"
    bad.write_text("package symbi\ndecision := {\n")
    with OpaServer(None) as server:
        with pytest.raises(PolicyError):
            push(
                build_config(
                    {
                        "policy": {
                            "engine": "opa",
                            "url": server.url,
                            "path": str(bad),
                            "data": str(TEST_POLICY_DATA),
                        }
                    }
                )
            )
        assert server.policies == {}


def test_push_needs_an_opa_engine_in_the_config() -> None:
    with pytest.raises(ConfigError):
        push(build_config({}))
