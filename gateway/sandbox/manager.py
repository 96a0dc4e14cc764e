"""The sandbox manager: the tiers, their limits from config, orphan sweep, risk pick."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from gateway.errors import SandboxUnavailable
from gateway.sandbox.egress import in_egress_netns

from .base import SandboxTier, sweep_temp_dirs
from .bwrap import BwrapTier
from .docker_tier import DockerTier, GvisorTier
from .pool import WarmPool
from .risk import CodeTrust, Sensitivity, assess_tier
from .types import TIERS, Limits, SandboxRequest, SandboxResult, Tier, ToolNeeds

log = logging.getLogger("symbi.sandbox")


class SandboxManager:
    """Owns one instance of each tier. Thread-safe: runs happen on worker threads.

    ``config`` is the gateway ``Config`` (its ``sandbox`` and ``security`` sections).
    """

    def __init__(self, config: Any, *, sweep_orphans: bool = True) -> None:
        self.config = config
        section = config.sandbox
        self.tiers: dict[str, SandboxTier] = {
            "bwrap": BwrapTier(),
            "docker": DockerTier(section.image),
            "gvisor": GvisorTier(section.image),
        }
        self._pool: WarmPool | None = None
        self._lock = threading.Lock()
        if sweep_orphans:
            self.cleanup_orphans()

    # -- limits and tiers ---------------------------------------------------------------
    def limits(self, **overrides: Any) -> Limits:
        """Limits from ``config.sandbox``; keyword overrides (None = keep) per call."""
        return Limits.from_config(self.config.sandbox, **overrides)

    def tier(self, name: str) -> SandboxTier:
        if name not in self.tiers:
            raise SandboxUnavailable(f"unknown sandbox tier {name!r} (known: {', '.join(TIERS)})")
        return self.tiers[name]

    def available(self, name: str) -> tuple[bool, str]:
        if name not in self.tiers:
            return False, f"unknown sandbox tier {name!r}"
        return self.tiers[name].available()

    def doctor(self, *, refresh: bool = True) -> dict[str, tuple[bool, str]]:
        """Every tier's (available, reason), probed now by starting a real sandbox in each."""
        return {n: t.available(refresh=refresh, deep=True) for n, t in self.tiers.items()}

    def assess_tier(
        self,
        needs: ToolNeeds,
        *,
        code_trust: CodeTrust | None,
        data_sensitivity: Sensitivity = "internal",
        policy_min_tier: str | None = None,
    ) -> Tier:
        """The risk pick (see :func:`gateway.sandbox.risk.assess_tier`) with this manager's probes."""
        return assess_tier(
            needs,
            code_trust=code_trust,
            data_sensitivity=data_sensitivity,
            policy_min_tier=policy_min_tier,
            default_tier=self.config.security.default_sandbox_tier,
            available=self.available,
        )

    # -- running ------------------------------------------------------------------------
    def run(self, tier: str, request: SandboxRequest, limits: Limits | None = None) -> SandboxResult:
        """Run ``request`` in ``tier`` (blocking). Unavailable tier -> SandboxUnavailable."""
        t = self.tier(tier)
        t.require()
        lim = limits or self.limits()
        pool = self._pool
        if pool is not None:
            result = pool.try_run(tier, request, lim)
            if result is not None:
                return result
        return t.run(request, lim)

    def wrap_stdio_command(
        self,
        tier: str,
        command: str,
        args: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        *,
        network: bool,
        limits: Limits | None = None,
    ) -> tuple[str, list[str]]:
        """(command, args) that launch a stdio MCP server inside ``tier``."""
        argv = self.tier(tier).stdio_argv(
            command, list(args), dict(env), cwd, network=network, limits=limits or self.limits(timeout_s=None)
        )
        if network:
            # egress only: a namespace of its own that cannot reach this host or private ranges
            argv = in_egress_netns(argv, allow=self.config.sandbox.egress_allow)
        return argv[0], argv[1:]

    # -- warm pool ----------------------------------------------------------------------
    @property
    def warm_pool(self) -> WarmPool | None:
        return self._pool

    def start_warm_pool(self, size: int | None = None) -> None:
        """Keep ``size`` ready sandboxes per Docker tier (default ``config.sandbox.warm_pool``)."""
        n = self.config.sandbox.warm_pool if size is None else size
        if n <= 0:
            return
        with self._lock:
            if self._pool is None:
                self._pool = WarmPool(self, n)

    # -- housekeeping -------------------------------------------------------------------
    def cleanup_orphans(self) -> list[str]:
        """Remove leftovers of dead gateway processes in every tier (best effort, logged)."""
        removed: list[str] = []
        for name, t in self.tiers.items():
            try:
                removed += [f"{name}: {r}" for r in t.cleanup_orphans()]
            except Exception as e:  # noqa: BLE001 - one tier's sweep failing must not stop the others
                log.warning("orphan sweep of tier %s failed: %s", name, e)
        removed += sweep_temp_dirs()
        if removed:
            log.info("removed sandbox orphans: %s", ", ".join(removed))
        return removed

    def leftovers(self) -> dict[str, list[str]]:
        return {n: t.leftovers() for n, t in self.tiers.items()}

    def close(self) -> None:
        """Stop the warm pool and remove everything this process created."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        bw = self.tiers["bwrap"]
        if isinstance(bw, BwrapTier):
            bw.close()


_default: SandboxManager | None = None
_default_lock = threading.Lock()


def default_manager() -> SandboxManager:
    """A process-wide manager over the default config (for callers without one)."""
    global _default
    with _default_lock:
        if _default is None:
            from gateway.config.model import Config

            _default = SandboxManager(Config())
        return _default


def wrap_stdio_command(
    tier: str,
    command: str,
    args: list[str],
    env: Mapping[str, str],
    cwd: str | None,
    *,
    network: bool,
    limits: Limits | None = None,
    manager: SandboxManager | None = None,
) -> tuple[str, list[str]]:
    """argv to launch an stdio MCP server inside ``tier``, stdin/stdout connected.

    docker/gvisor: ``docker run -i --rm ...``; bwrap: ``/bin/sh -c`` launcher + bwrap.
    Read-only binds: the cwd and the folders of absolute-path command/args outside /usr.
    Network is off unless ``network`` (gvisor cannot grant it here: SandboxUnavailable).
    The server runs as uid/gid 65534: its files must be readable by that user.
    """
    m = manager or default_manager()
    return m.wrap_stdio_command(tier, command, args, env, cwd, network=network, limits=limits)
