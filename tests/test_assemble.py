"""The one assembly point: ``make_gateway`` builds typed components and the ordered chain.

Also the module boundaries the assembly relies on (read from the source with ``ast``): the
core never imports the fronts, verification does not import the catalogue, the steps do not
import the gateway object.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gateway.assemble import make_gateway
from gateway.audit.log import AuditLog
from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.policy import PolicyEngine
from gateway.steps.agent import AgentStep
from gateway.steps.arguments import ValidateArguments
from gateway.steps.audit import AuditStep
from gateway.steps.metrics import MetricsStep
from gateway.steps.policy import PolicyStep
from gateway.steps.resolve import ResolveTool
from gateway.steps.results import ValidateResult
from gateway.steps.schedule import ScheduleStep
from gateway.steps.unsafe import WarnUnsafe
from gateway.steps.verify import VerifyTool
from gateway.verify.verifier import ToolVerifier
from tests.conftest import ROOT, write_config

GATEWAY = ROOT / "gateway"


def _config(tmp_path: Path, body: str = "") -> object:
    return load_config(write_config(tmp_path, "[sandbox]\ncode_tools = false\n" + body), {})


def _close(gw: object) -> None:
    for close in gw._closers:  # type: ignore[attr-defined]
        close()


def test_the_chain_order_with_every_component(tmp_path: Path) -> None:
    gw = make_gateway(_config(tmp_path), metrics=GatewayMetrics())  # type: ignore[arg-type]
    try:
        assert [type(s) for s in gw.steps] == [
            MetricsStep,
            AuditStep,
            AgentStep,
            ResolveTool,
            VerifyTool,
            ValidateArguments,
            PolicyStep,
            ValidateResult,
            ScheduleStep,
        ]
        assert isinstance(gw.audit, AuditLog)
        assert isinstance(gw.policy, PolicyEngine)
        assert isinstance(gw.verifier, ToolVerifier)
    finally:
        _close(gw)


def test_turned_off_components_leave_the_chain(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[security]\nunsafe_disable_policies = true\nunsafe_disable_audit = true\n")
    gw = make_gateway(cfg)  # type: ignore[arg-type]
    try:
        # the runtime is not a protection that can be turned off: its steps stay; a warning on
        # every call takes the place of audit and policy (tests/config/test_unsafe.py)
        assert [type(s) for s in gw.steps] == [
            WarnUnsafe,
            AgentStep,
            ResolveTool,
            VerifyTool,
            ValidateArguments,
            ValidateResult,
            ScheduleStep,
        ]
        assert gw.audit is None and gw.policy is None
    finally:
        _close(gw)


def test_a_failed_assembly_releases_what_it_opened(tmp_path: Path) -> None:
    """A built-in whose name an upstream takes is refused; the audit log opened first is closed."""
    from gateway.config.model import ServerConfig

    good = load_config(write_config(tmp_path, "[sandbox]\ncode_tools = true\n"), {})
    # the config loader refuses the reserved name already; model_copy skips that check so the
    # assembly's own refusal (after the audit log is open) is what is tested
    bad = good.model_copy(update={"servers": {"sandbox": ServerConfig(command="true")}})
    with pytest.raises(ConfigError):
        make_gateway(bad)
    # the first chain file is free again: a new gateway takes audit.db, not audit-2.db
    gw = make_gateway(_config(tmp_path))  # type: ignore[arg-type]
    try:
        assert gw.audit is not None and gw.audit.path == bad.audit_path
    finally:
        _close(gw)


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return mods


def _offenders(files: list[Path], forbidden: str) -> list[str]:
    return [
        f"{p.relative_to(ROOT)} imports {m}"
        for p in files
        for m in sorted(_imports(p))
        if m == forbidden or m.startswith(forbidden + ".")
    ]


def test_only_the_fronts_and_the_cli_import_the_server_package() -> None:
    core = [
        p
        for p in GATEWAY.rglob("*.py")
        if not p.is_relative_to(GATEWAY / "server") and not p.is_relative_to(GATEWAY / "cli")
    ]
    assert core and _offenders(core, "gateway.server") == []


def test_verification_does_not_import_the_catalogue() -> None:
    assert _offenders(list((GATEWAY / "verify").rglob("*.py")), "gateway.catalog") == []


def test_steps_do_not_import_the_gateway_object() -> None:
    files = list((GATEWAY / "steps").rglob("*.py"))
    assert _offenders(files, "gateway.app") == [] and _offenders(files, "gateway.assemble") == []
