"""The built-in upstreams the config turns on, as ``gateway.assemble.make_gateway`` plugs them in.

A built-in (``Builtin`` protocol in ``gateway.upstream.builtin``) serves tools in-process; they pass the
whole chain (verification, policy, audit) like any upstream tool. A new capability is built
in ``make_builtins`` and appended to its list.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp import types

from gateway.app import Background
from gateway.config.model import Config
from gateway.context import CallContext, UpstreamInfo
from gateway.errors import ConfigError
from gateway.events import EventSink
from gateway.memory.builtin import KnowledgeBuiltin, MemoryBuiltin, MemoryService
from gateway.policy import PolicyEngine
from gateway.runtime.agents import AgentRegistry
from gateway.sandbox import SandboxManager, SandboxTools
from gateway.sandbox.types import Limits
from gateway.upstream.builtin import Builtin


class SandboxBuiltin:
    """The built-in ``sandbox`` server: code tools run in a tier picked by risk and policy."""

    name = "sandbox"

    def __init__(self, tools: SandboxTools) -> None:
        self._tools = tools
        self._listing = [types.Tool.model_validate(d) for d in tools.list_tools()]

    def tools(self) -> list[types.Tool]:
        return self._listing

    async def call(self, call: CallContext) -> types.CallToolResult:
        assert call.tool is not None
        limits = None
        if call.sandbox_budget is not None:  # the agent's budget caps the sandbox's own limits
            base = self._tools.config.sandbox
            b = call.sandbox_budget
            limits = Limits.from_config(
                base,
                memory_mb=min(base.memory_mb, int(b["memory_mb"])),
                cpus=min(base.cpus, b["cpus"]),
                timeout_s=min(base.timeout_s, b["timeout_s"]),
            )
        result, tier = await self._tools.call(
            call.tool.original_name,
            call.arguments,
            min_tier=call.sandbox_tier,
            limits=limits,
            principal_kind=call.principal.kind,
        )
        call.sandbox_tier = tier
        return types.CallToolResult.model_validate(result)


def make_builtins(
    config: Config,
    manager: SandboxManager | None,
    memory: MemoryService | None,
    *,
    events: EventSink,
    policy: PolicyEngine | None,
    agents: AgentRegistry,
    closers: list[Callable[[], object]],
    background: list[Background],
) -> list[Builtin]:
    """The built-in upstreams the config turns on. New capabilities (bus, memory, ...) go here."""
    builtins: list[Builtin] = []
    if config.sandbox.code_tools:
        assert manager is not None
        builtins.append(SandboxBuiltin(SandboxTools(config, manager)))
    if memory is not None:
        builtins += [MemoryBuiltin(memory), KnowledgeBuiltin(memory)]
    if config.bus.enabled:  # the agent bus (gateway/bus): bus__* tools, bus:// resources
        from gateway.bus.assemble import make_bus_builtin

        bus_builtin = make_bus_builtin(config, events, policy, agents)
        closers.append(bus_builtin.close)
        background.append(bus_builtin.run)
        builtins.append(bus_builtin)
    for b in builtins:
        if b.name in config.servers:
            raise ConfigError(
                f"servers.{b.name}: the name {b.name!r} is taken by a built-in upstream (rename the server)"
            )
    return builtins


def upstream_infos(config: Config, builtins: list[Builtin]) -> dict[str, UpstreamInfo]:
    infos = {
        name: UpstreamInfo(name=name, transport="stdio" if srv.command else "http", domain=srv.domain)
        for name, srv in config.servers.items()
    }
    infos.update({b.name: UpstreamInfo(name=b.name, transport="builtin") for b in builtins})
    return infos
