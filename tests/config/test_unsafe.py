"""Off-switches: named ``unsafe``, refused in production mode, warned about on every call.

``runtime.mode`` (env ``SYMBI_RUNTIME_MODE``) is ``development`` by default; ``production``
refuses every option that turns a protection off, naming the key (ConfigError, exit 2).
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.context import CallContext, Principal
from gateway.errors import ConfigError, UnknownTool
from gateway.steps.unsafe import WarnUnsafe
from tests.conftest import SYMBI, symbi_env, write_config

# (config body, the key the refusal names); the older spellings are the deprecated ones
UNSAFE = [
    ("[security]\nunsafe_disable_policies = true\n", "security.unsafe_disable_policies"),
    ("[security]\nenforce_policies = false\n", "security.enforce_policies"),
    ("[security]\nunsafe_disable_audit = true\n", "security.unsafe_disable_audit"),
    ("[security]\naudit_enabled = false\n", "security.audit_enabled"),
    ('[audit]\non_failure = "unsafe_warn"\n', "audit.on_failure"),
    ('[audit]\non_failure = "warn"\n', "audit.on_failure"),
    ('[http]\nunsafe_anonymous_principal = "guest"\n', "http.unsafe_anonymous_principal"),
    ('[http]\nanonymous_principal = "guest"\n', "http.anonymous_principal"),
    ('[mcp]\ntool_verification = "warn"\n', "mcp.tool_verification"),
    ('[mcp]\ntool_verification = "off"\n', "mcp.tool_verification"),
    ('[servers.up]\ncommand = "true"\nverification = "off"\n', "servers.up.verification"),
    ("[mcp]\ninsecure_discovery_http = true\n", "mcp.insecure_discovery_http"),
    ("[security]\nunsafe_upstreams_as_gateway_user = true\n", "security.unsafe_upstreams_as_gateway_user"),
]
IDS = [key + ("" if "unsafe" in body else " (old spelling)") for body, key in UNSAFE]


@pytest.mark.parametrize(("body", "key"), UNSAFE, ids=IDS)
def test_production_refuses_each_unsafe_option(tmp_path: Path, body: str, key: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as refused:
        load_config(path, {"SYMBI_RUNTIME_MODE": "production"})
    assert key in refused.value.message
    # the same file is accepted in development (the default), with the option in force
    cfg = load_config(path, {})
    assert key in [o.key for o in cfg.unsafe_options()]


@pytest.mark.parametrize(("body", "key"), UNSAFE[:2], ids=IDS[:2])
def test_production_from_the_config_file_too(tmp_path: Path, body: str, key: str) -> None:
    path = write_config(tmp_path, '[runtime]\nmode = "production"\n' + body)
    with pytest.raises(ConfigError) as refused:
        load_config(path, {})
    assert key in refused.value.message


def test_production_with_every_protection_on_loads(tmp_path: Path) -> None:
    cfg = load_config(
        write_config(tmp_path, '[servers.up]\ncommand = "true"\n'), {"SYMBI_RUNTIME_MODE": "production"}
    )
    assert cfg.runtime.mode == "production" and cfg.unsafe_options() == []
    assert (
        cfg.policies_enforced
        and cfg.audit_on
        and not cfg.audit_fails_open
        and cfg.anonymous_principal is None
    )


def test_symbi_config_check_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[security]\nunsafe_disable_audit = true\n")
    proc = subprocess.run(
        [str(SYMBI), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=symbi_env(SYMBI_RUNTIME_MODE="production"),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "security.unsafe_disable_audit" in proc.stderr


def test_old_spelling_is_loudly_deprecated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="symbi.config"):
        cfg = load_config(write_config(tmp_path, "[security]\nenforce_policies = false\n"), {})
    assert not cfg.policies_enforced
    deprecated = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert deprecated and "security.unsafe_disable_policies" in deprecated[0].getMessage()


@pytest.mark.anyio
async def test_development_warns_on_every_call(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(
        write_config(tmp_path, "[sandbox]\ncode_tools = false\n[security]\nunsafe_disable_policies = true\n"),
        {},
    )
    gw = make_gateway(cfg)
    assert any(isinstance(s, WarnUnsafe) for s in gw.steps)
    async with gw.running():
        with caplog.at_level(logging.WARNING, logger="symbi.unsafe"):
            for _ in range(3):
                with pytest.raises(UnknownTool):  # no upstreams: each call is refused, and still warned about
                    await gw.call(
                        CallContext(principal=Principal("tester"), kind="tools/call", target="x__y")
                    )
    warnings = [r for r in caplog.records if r.name == "symbi.unsafe"]
    assert len(warnings) == 3
    assert all("security.unsafe_disable_policies" in r.getMessage() for r in warnings)


def test_no_warning_step_when_every_protection_is_on(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n"), {})
    gw = make_gateway(cfg)
    try:
        assert not any(isinstance(s, WarnUnsafe) for s in gw.steps)
    finally:
        for close in gw._closers:
            close()
