"""The gateway's sandbox tiers, and stdio upstreams run inside them (``servers.X.sandbox``):
what the assembly point (``gateway.assemble``) builds for the sandbox."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from gateway.config.model import Config, ServerConfig
from gateway.sandbox.docker_api import remove_container
from gateway.sandbox.manager import SandboxManager, wrap_stdio_command
from gateway.upstream.transport import CommandWrapper


def sandbox_manager(config: Config, closers: list[Callable[[], object]]) -> SandboxManager | None:
    """The sandbox tiers, when code tools, hosted agents or a sandboxed server need them."""
    manager: SandboxManager | None = None
    if (
        config.sandbox.code_tools
        or config.agents
        or any(s.sandbox not in (None, "none") for s in config.servers.values())
    ):
        manager = SandboxManager(config)
        closers.append(manager.close)
        manager.start_warm_pool()  # sandbox.warm_pool ready sandboxes per Docker tier, refilled in the background
    return manager


def sandboxed_command(manager: SandboxManager, hidden: list[str]) -> CommandWrapper:
    """Runs stdio upstreams with ``servers.X.sandbox`` set inside their tier; ``hidden`` (the
    data dir, keys, config) is masked in it even when a bound folder holds it."""

    def wrap(name: str, srv: ServerConfig) -> tuple[str, list[str], Callable[[], None] | None]:
        assert srv.command is not None and srv.sandbox is not None
        command, args = wrap_stdio_command(
            srv.sandbox,
            srv.command,
            list(srv.args),
            srv.env,
            str(srv.cwd) if srv.cwd else None,
            network=srv.sandbox_network,
            manager=manager,
            hidden=hidden,
        )
        if srv.sandbox not in ("docker", "gvisor") or args[:1] != ["run"]:
            return command, args, None
        # Name the container so it can be removed when the session ends: killing the docker
        # CLI (what an stdio client does to a server that ignores EOF) leaves it running.
        cname = f"symbi-up-{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}"
        return command, ["run", "--name", cname, *args[1:]], lambda: _gone(cname)

    return wrap


def _gone(name: str) -> None:
    """The named container removed (``docker_api.remove_container``: gone already is fine)."""
    remove_container(name)
