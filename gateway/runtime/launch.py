"""A hosted agent's launch: its process's arguments, environment and read-only paths, and its
argv in its sandbox tier (bwrap, gVisor or Docker) with the handle that removes what the run
leaves (``gateway.runtime.sandboxed``). The supervisor (``gateway.runtime.hosted``) runs it."""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config.model import Config
from gateway.config.sections import AgentConfig
from gateway.errors import GatewayError
from gateway.events import Event, EventSink, record_acted
from gateway.runtime.resources import ResourceLimits
from gateway.runtime.sandboxed import Cgroup, Container, Sandboxed, docker_options

if TYPE_CHECKING:
    from gateway.runtime.agents import Agent
    from gateway.runtime.core import AgentRuntime
    from gateway.sandbox.base import SandboxTier
    from gateway.sandbox.manager import SandboxManager

SOCKET_IN_SANDBOX = "/run/symbi/gateway.sock"
_INTERVAL_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def interval_s(start: str) -> float | None:
    """An interval start mode's period in seconds ("30s"), or None (another start mode)."""
    m = _INTERVAL_RE.match(start)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else None


class Credentials(Protocol):
    """Makes and revokes a run's API key (the HTTP front's ``ApiKeyStore``)."""

    def create(self, principal: str, roles: tuple[str, ...], kind: str = "user") -> tuple[str, Any]: ...

    def revoke(self, kid: str) -> bool: ...


@dataclass(frozen=True)
class AgentHost:
    """Where hosted agents reach the gateway: the HTTP front's Unix socket and key store
    (``symbi serve`` builds it before assembly; without it hosted agents fail to start)."""

    socket_path: str
    keys: Credentials


def hosted_command(
    config: Config,
    sandbox: SandboxManager | None,
    socket_path: str | None,
    name: str,
    ac: AgentConfig,
    tier: str,
    limits: ResourceLimits,
    key: str,
    run_tag: str,
) -> tuple[list[str], Sandboxed]:
    """Run ``name``'s argv in ``tier``, and what removes its cgroup or container afterwards."""
    assert socket_path is not None
    t = _usable(sandbox, tier)
    from gateway.custody import hidden_paths
    from gateway.sandbox.base import masked_paths, read_only_binds
    from gateway.sandbox.types import Limits

    hidden = hidden_paths(config)  # never visible to the agent, whatever is bound
    args, env, ro = process_inputs(config, name, ac, key)
    sb_limits = Limits(
        memory_mb=limits.memory_mb, cpus=limits.cpu_cores, pids=256, timeout_s=limits.execution_timeout_s
    )
    socket = (socket_path, SOCKET_IN_SANDBOX)
    if tier == "bwrap":
        from gateway.sandbox.bwrap import BwrapTier

        assert isinstance(t, BwrapTier)
        argv, cg = t.hosted_argv(
            ac.command,
            args,
            env,
            limits=sb_limits,
            ro_paths=ro,
            socket=socket,
            disk_io_mbps=limits.disk_io_mbps,
            hidden=hidden,
        )
        return argv, Cgroup(cg)
    if tier == "gvisor":
        from gateway.runtime.gvisor_agent import gvisor_argv

        return gvisor_argv(
            ac.command, args, env, limits, ro_paths=ro, socket=socket, run_tag=run_tag, hidden=hidden
        )
    # docker: a named container, removed when the run ends
    cname = f"symbi-agent-{name}-{run_tag}"
    argv = t.stdio_argv(ac.command, args, env, None, network=False, limits=sb_limits)
    at = argv.index("-v")
    extra = docker_options(
        cname,
        socket,
        ro,
        masked_paths([*read_only_binds(ac.command, args, None), *ro], hidden),
        limits.disk_io_mbps,
    )
    argv[at:at] = extra
    return argv, Container(cname, launch_env=env)


def _usable(sandbox: SandboxManager | None, tier: str) -> SandboxTier:
    """``tier`` of ``sandbox``, or ``GatewayError`` naming why a run cannot use it."""
    if sandbox is None:
        raise GatewayError("no sandbox manager: hosted agents need a sandbox tier")
    if tier != "gvisor":  # gVisor runs straight from runsc here (see gvisor_agent.py)
        ok, why = sandbox.available(tier)
        if not ok:
            raise GatewayError(f"sandbox tier {tier!r} is unavailable: {why}")
    return sandbox.tier(tier)


def process_inputs(
    config: Config, name: str, ac: AgentConfig, key: str
) -> tuple[list[str], dict[str, str], list[str]]:
    """The process's arguments, its environment (the gateway's socket and its credential
    included) and its read-only paths, with ``./`` and ``../`` paths made absolute."""
    base = config.source.parent if config.source else Path.cwd()

    def here(v: str) -> str:  # ./x and ../x are relative to the config file
        return str((base / v).resolve()) if v.startswith(("./", "../")) else v

    env = {
        **{k: here(v) for k, v in ac.env.items()},
        "SYMBI_GATEWAY_SOCKET": SOCKET_IN_SANDBOX,
        "SYMBI_AGENT_TOKEN": key,
        "SYMBI_AGENT_NAME": name,
    }
    args = [here(a) for a in ac.args]
    ro = [str((base / p).resolve()) for p in ac.read_only_paths]
    from gateway.sandbox.base import refuse_exposing

    for p in ro:
        refuse_exposing(p)  # as for the folders of its command and arguments
    return args, env, ro


def revoke_pending(keys: Credentials | None, unrevoked: set[str], logger: logging.Logger) -> None:
    """Revoke the run credentials not revoked yet (blocking: a worker thread). A key store
    that cannot be reached (PostgreSQL down) keeps them for the next try -- it never raises
    out of a run, which would end the supervisor and the gateway's lifespan with it."""
    for kid in sorted(unrevoked):
        try:
            if keys is not None:
                keys.revoke(kid)
        except (OSError, GatewayError) as e:
            logger.error("could not revoke the credential %s (retried at the next run): %s", kid, e)
            return
        unrevoked.discard(kid)


def launchable(tier: str, keys: Credentials | None, socket_path: str | None) -> Credentials:
    """The key store a hosted run's credential is made in; GatewayError when no run can start."""
    if tier == "none":
        raise GatewayError(
            "a hosted agent always runs in a sandbox tier (security.default_sandbox_tier"
            " is 'none': set agents.NAME.sandbox)"
        )
    if keys is None or socket_path is None:
        raise GatewayError("hosted agents need `symbi serve` (they reach the gateway over its Unix socket)")
    return keys


def failed_run(
    runtime: AgentRuntime, events: EventSink, agent: Agent, why: str, code: int | None, oom: bool
) -> None:
    """A hosted agent's failed run on the record: the audit log, and /api/status's errors."""
    record_acted(
        events,
        Event.AGENT_FAILED,
        {"name": agent.name, "reason": why, "exit_code": code},
        principal=agent.principal,
        agent=agent.id,
    )
    runtime.recent_errors.append(
        {
            "time": time.time(),
            "agent": agent.id,
            "code": "agent_failed",
            "target": agent.name,
            "type": "oom" if oom else "exit",
        }
    )


def escalated(window: deque[float], ac: AgentConfig) -> int:
    """The failures in ``window`` (their monotonic times, older ones dropped from it) when
    they reach ``max_failures`` within ``failure_window_s`` (the next run escalates), else 0."""
    now = time.monotonic()
    while window and window[0] <= now - ac.failure_window_s:
        window.popleft()
    return len(window) if len(window) >= ac.max_failures else 0
