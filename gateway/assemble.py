"""Build a ``Gateway`` from the config with every component the config turns on.

This is the one place that decides which steps run and which built-ins exist, so the
fronts (stdio, HTTP) and the tests get the same gateway. Protections are on unless the
config names them off, and turning one off is logged at start.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import anyio
from mcp import types
from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.app import Gateway
from gateway.config.model import Config, ServerConfig
from gateway.context import CallContext, Principal, ToolInfo
from gateway.errors import AuditError, ConfigError
from gateway.events import EventSink, LoggingSink
from gateway.runtime.agents import AgentRegistry
from gateway.steps.verify import VerifyTool
from gateway.verify.verifier import ToolVerifier

_logger = logging.getLogger("symbi.assemble")

AUDIT_SLOTS = 16  # concurrent gateway processes sharing one data dir (one chain each)


def open_audit(config: Config) -> Any:
    """The audit log; a second process on the same data dir writes its own chain file.

    Each chain has one writer (the hash chain needs a single head), so when another gateway
    process (a second ``symbi mcp`` launched by an IDE, say) holds ``audit.db`` this one takes
    ``audit-2.db``, ``audit-3.db``...; ``symbi audit verify`` checks every chain.
    """
    from gateway.audit import AuditLog
    from gateway.audit.log import AuditLogBusy

    base = config.audit_path
    last: AuditError | None = None
    for slot in range(1, AUDIT_SLOTS + 1):
        path = base if slot == 1 else base.with_name(f"{base.stem}-{slot}{base.suffix}")
        try:
            return AuditLog(
                path,
                config.audit_key_path,
                checkpoint_every=config.audit.checkpoint_every,
                batch_max=config.audit.batch_max,
                on_failure=config.audit.on_failure,
            )
        except AuditLogBusy as e:
            last = e
    assert last is not None
    raise last


class SandboxBuiltin:
    """The built-in ``sandbox`` server: code tools run in a tier picked by risk and policy."""

    name = "sandbox"
    code_tools = True

    def __init__(self, tools: Any) -> None:
        self._tools = tools
        self._listing = [types.Tool.model_validate(d) for d in tools.list_tools()]

    def tools(self) -> list[types.Tool]:
        return self._listing

    async def call(self, call: CallContext) -> types.CallToolResult:
        assert call.tool is not None
        result, tier = await self._tools.call(call.tool.original_name, call.arguments, min_tier=call.sandbox_tier)
        call.sandbox_tier = tier
        return types.CallToolResult.model_validate(result)


def make_gateway(
    config: Config,
    bus: InMemorySubscriptionBus | None = None,
    *,
    sink_wrapper: Callable[[EventSink], EventSink] | None = None,
    timings: Any = None,
) -> Gateway:
    """The gateway the config describes; ``sink_wrapper`` tees every component's events
    (the HTTP front counts them for ``/metrics``); ``timings`` gets ``observe_policy(seconds)``
    and ``observe_audit_write(seconds)`` for every call."""
    closers: list[Any] = []
    events: EventSink
    audit = None
    if config.security.audit_enabled:
        audit = open_audit(config)
        events = audit
        closers.append(audit.close)
    else:
        _logger.warning("AUDIT IS OFF (security.audit_enabled = false): calls are not recorded")
        events = LoggingSink()
    if sink_wrapper is not None:
        events = sink_wrapper(events)
    events.emit("config.loaded", {"source": str(config.source) if config.source else None,
                                  "servers": sorted(config.servers)})

    builtins: list[Any] = []
    manager = None
    if config.sandbox.code_tools or any(s.sandbox not in (None, "none") for s in config.servers.values()):
        from gateway.sandbox import SandboxManager, SandboxTools

        manager = SandboxManager(config)
        closers.append(manager.close)
        if config.sandbox.code_tools:
            if "sandbox" in config.servers:
                raise ConfigError("servers.sandbox: the name 'sandbox' is taken by the built-in code tools "
                                  "(rename the server or set sandbox.code_tools = false)")
            builtins.append(SandboxBuiltin(SandboxTools(config, manager)))

    agents = AgentRegistry(events)  # every session is an agent; ids made here, never by clients
    verifier = ToolVerifier(config, events, builtins=frozenset(b.name for b in builtins))
    closers.append(verifier.close)

    engine = None
    list_filter = None
    if config.security.enforce_policies:
        from gateway.policy import CallCounters, build_engine
        from gateway.steps.policy import PolicyStep, afilter_listing

        engine = build_engine(config, events)
        closers.append(engine.close)
        counters = CallCounters()

        async def list_filter(principal: Principal, tools: list[ToolInfo]) -> list[ToolInfo]:
            return await afilter_listing(engine, principal, tools, upstreams=None, counters=counters,
                                         agent=agents.info(principal.agent))
    else:
        _logger.warning("POLICY IS OFF (security.enforce_policies = false): every verified call is allowed")

    wrap = None
    if manager is not None:
        from gateway.sandbox import wrap_stdio_command

        def wrap(name: str, srv: ServerConfig) -> tuple[str, list[str], Callable[[], None] | None]:
            assert srv.command is not None and srv.sandbox is not None
            command, args = wrap_stdio_command(
                srv.sandbox, srv.command, list(srv.args), srv.env, str(srv.cwd) if srv.cwd else None,
                network=srv.sandbox_network, manager=manager,
            )
            if srv.sandbox not in ("docker", "gvisor") or args[:1] != ["run"]:
                return command, args, None
            # Name the container so it can be removed when the session ends: killing the docker
            # CLI (what an stdio client does to a server that ignores EOF) leaves it running.
            cname = f"symbi-up-{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}"
            return command, ["run", "--name", cname, *args[1:]], lambda: _remove_container(cname)

    gw = Gateway(
        config,
        events=events,
        bus=bus,
        builtins=builtins,
        tool_infos=verifier.assess,
        list_filter=list_filter,
        wrap_command=wrap,
        agents=agents,
    )
    gw.verify_step = VerifyTool()
    if audit is not None:
        from gateway.steps.audit import AuditStep

        gw.audit_step = AuditStep(audit, observe=getattr(timings, "observe_audit_write", None))
        gw.audit_log = audit
    if engine is not None:
        gw.policy_step = PolicyStep(engine, counters, observe=getattr(timings, "observe_policy", None))
        gw.policy_engine = engine
    gw.sandbox_manager = manager
    gw.verifier = verifier
    gw.background.append(_poll_approvals(verifier, config.mcp.recheck_interval_s))
    gw.closers.extend(reversed(closers))
    return gw


def _remove_container(name: str) -> None:
    from gateway.sandbox.docker_tier import docker_client

    try:
        docker_client().containers.get(name).remove(force=True)
    except Exception as e:  # noqa: BLE001 - already gone (--rm) or docker is down; the orphan sweep catches the rest
        _logger.debug("container %s not removed: %s", name, e)


def _poll_approvals(verifier: ToolVerifier, interval: float):  # type: ignore[no-untyped-def]
    """Re-assess the catalogue when the CLI approves/revokes or a manifest changes."""

    async def run(gw: Gateway) -> None:
        seen = verifier.fingerprint()
        while True:
            await anyio.sleep(interval)
            now = verifier.fingerprint()
            if now != seen:
                seen = now
                _logger.info("approvals or manifests changed: re-verifying the catalogue")
                # made outside this process (symbi tools approve/revoke, a manifest edit): on the record
                gw.events.emit("tool.approvals_changed", {"fingerprint": [str(x) for x in now]})
                await gw.refresh()

    return run

