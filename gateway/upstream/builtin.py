"""The protocols of built-in upstreams: tool (and resource, prompt) providers inside the gateway.

Their tools pass the same chain (verification, arguments, policy, audit) as any upstream
tool; ``gateway.builtins.make_builtins`` builds the ones the config turns on.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from mcp import types

from gateway.catalog import UpstreamListing
from gateway.context import CallContext, Principal


class Builtin(Protocol):
    """A tool provider inside the gateway (the sandbox code tools, the bus, memory...).

    Its tools are listed as ``<name>__<tool>`` and pass the same chain (verification,
    arguments, policy, audit) as any upstream tool. ``gateway.assemble.make_gateway`` is
    where a new one is added.
    """

    name: str

    def tools(self) -> list[types.Tool]: ...

    async def call(self, call: CallContext) -> types.CallToolResult: ...


@runtime_checkable
class ResourceBuiltin(Builtin, Protocol):
    """A built-in that also serves resource templates (``memory://{agent}/{type}``)."""

    def templates(self) -> list[types.ResourceTemplate]: ...

    async def read_resource(self, call: CallContext) -> types.ReadResourceResult: ...


@runtime_checkable
class PromptBuiltin(Builtin, Protocol):
    """A built-in that also serves prompts (``knowledge__rag``)."""

    def prompts(self) -> list[types.Prompt]: ...

    async def get_prompt(self, call: CallContext) -> types.GetPromptResult: ...


@runtime_checkable
class WatchedResourceBuiltin(ResourceBuiltin, Protocol):
    """A built-in with listed resources a client may subscribe to (the bus: ``bus://inbox``,
    ``bus://topics/{name}``): ``resources/subscribe`` pushes ``notifications/resources/updated``."""

    def resources(self) -> list[types.Resource]: ...

    async def watch(self, uri: str, principal: Principal, connection: Any, on: bool) -> None:
        """resources/subscribe (``on``) or unsubscribe for one client connection (its
        ``outbound.notify`` pushes notifications/resources/updated)."""


def listing_of(b: Builtin) -> UpstreamListing:
    """What a built-in offers, for the catalogue (resources only when it can be watched)."""
    return UpstreamListing(
        name=b.name,
        pass_through=False,
        tools=b.tools(),
        resources=b.resources() if isinstance(b, WatchedResourceBuiltin) else [],
        templates=b.templates() if isinstance(b, ResourceBuiltin) else [],
        prompts=b.prompts() if isinstance(b, PromptBuiltin) else [],
    )
