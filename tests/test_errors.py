"""One error tree, and one definition each of "denial", "admin" and "blocked".

The audit record, ``/metrics`` and the JSON-RPC boundary used to disagree about an unknown
tool (``error`` in the audit, ``denied`` in the metrics); here all three see the same call.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest
from mcp import types

import gateway
from gateway.audit import AuditLog
from gateway.boundary import error_result, protocol_error
from gateway.catalog import LiveCatalog
from gateway.chain import build_chain
from gateway.context import CallContext, Principal, is_admin, is_blocked
from gateway.errors import (
    ArgumentsInvalid,
    AuditError,
    CatalogError,
    GatewayError,
    PolicyDenied,
    PolicyError,
    RateLimited,
    SandboxError,
    UnknownTool,
    UpstreamError,
    VerificationDenied,
    is_denial,
)
from gateway.metrics import GatewayMetrics
from gateway.steps.audit import AuditStep
from gateway.steps.metrics import MetricsStep
from gateway.steps.resolve import ResolveTool


def _all_gateway_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


def test_every_error_class_is_in_the_one_tree() -> None:
    # private ones (``_Bad``, ``_Usage``) are control flow inside one module, never raised out of it
    elsewhere = []
    for name in _all_gateway_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and name != "gateway.errors"
                and not obj.__name__.startswith("_")
            ):
                elsewhere.append(f"{name}.{obj.__name__}")
    assert elsewhere == []


@pytest.mark.parametrize(
    ("err", "denial"),
    [
        (UnknownTool("x"), True),
        (CatalogError("x"), True),
        (ArgumentsInvalid("x"), True),
        (VerificationDenied("x"), True),
        (PolicyDenied("x"), True),
        (PolicyError("x"), True),
        (RateLimited("x"), True),
        (UpstreamError("x"), False),
        (SandboxError("x"), False),
        (AuditError("x"), False),
        (RuntimeError("x"), False),
    ],
)
def test_is_denial(err: BaseException, denial: bool) -> None:
    assert is_denial(err) is denial
    # the boundary agrees: a denial is "invalid params", a failure an internal error
    expected = types.INVALID_PARAMS if denial else types.INTERNAL_ERROR
    assert protocol_error(err).error.code == expected


@pytest.mark.anyio
async def test_an_unknown_tool_is_denied_in_the_audit_the_metrics_and_the_result(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", tmp_path / "audit-key.pem")
    metrics = GatewayMetrics()
    try:
        chain = build_chain([MetricsStep(metrics), AuditStep(log), ResolveTool(LiveCatalog({}))], _never)
        call = CallContext(principal=Principal("alice"), kind="tools/call", target="nope__tool")
        with pytest.raises(UnknownTool) as caught:
            await chain(call)
        log.flush()
        assert log.recent(1)[0]["details"]["outcome"] == "denied"
        assert metrics.recent.latest(1)[0].outcome == "denied"
        meta = error_result(caught.value).meta or {}
        assert meta["symbi/error"]["code"] == UnknownTool.code
    finally:
        log.close()


async def _never(call: CallContext) -> object:
    raise AssertionError("an unknown tool must not be dispatched")


def test_is_admin_is_the_role_not_the_kind() -> None:
    assert is_admin(Principal("root", roles=("admin",)))
    assert is_admin(Principal("svc", kind="service", roles=("ops", "admin")))
    # a kind describes; it grants nothing
    assert not is_admin(Principal("boss", kind="admin"))
    assert not is_admin(Principal("dev", roles=("developer",)))
    assert not is_admin(None)


@pytest.mark.parametrize(
    ("mode", "status", "blocked"),
    [
        ("strict", "verified", False),
        ("strict", "pinned", False),
        ("strict", "unverified", True),
        ("strict", "failed", True),
        ("strict", "drifted", True),
        ("tofu", "pinned", False),
        ("tofu", "drifted", True),
        ("warn", "failed", False),
        ("warn", "drifted", False),
        ("warn", "revoked", True),
        ("off", "off", False),
        ("off", "revoked", True),
    ],
)
def test_is_blocked(mode: str, status: str, blocked: bool) -> None:
    assert is_blocked(mode, status) is blocked


def test_every_gateway_error_has_its_own_code() -> None:
    def subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    classes = subclasses(GatewayError)
    codes = [c.code for c in classes if "code" in vars(c)]
    assert len(classes) > 15 and len(codes) == len(set(codes))
