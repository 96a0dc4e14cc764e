"""The sandbox manager: the tiers, their limits from config, orphan sweep, risk pick."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import SandboxUnavailable
from gateway.sandbox.egress import in_egress_netns

from .base import SandboxTier, sweep_temp_dirs
from .bwrap import BwrapTier
from .docker_tier import DockerTier, GvisorTier
from .pool import WarmPool
from .risk import CodeTrust, Sensitivity, assess_tier
from .types import TIERS, Limits, RunCancel, SandboxRequest, SandboxResult, Tier, ToolNeeds

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
    def run(
        self,
        tier: str,
        request: SandboxRequest,
        limits: Limits | None = None,
        *,
        cancel: RunCancel | None = None,
    ) -> SandboxResult:
        """Run ``request`` in ``tier`` (blocking; ``cancel`` stops it from another thread).
        Unavailable tier -> SandboxUnavailable."""
        t = self.tier(tier)
        t.require()
        lim = limits or self.limits()
        pool = self._pool
        if pool is not None:
            result = pool.try_run(tier, request, lim, cancel=cancel)
            if result is not None:
                return result
        return t.run(request, lim, cancel=cancel)

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
        hidden: Sequence[str] = (),
    ) -> tuple[str, list[str]]:
        """(command, args) that launch a stdio MCP server inside ``tier``; ``hidden`` paths
        (the gateway's data dir, keys, config) are masked wherever a bound folder holds them."""
        argv = self.tier(tier).stdio_argv(
            command,
            list(args),
            dict(env),
            cwd,
            network=network,
            limits=limits or self.limits(timeout_s=None),
            hidden=hidden,
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
        pooled: list[str] = []
        with self._lock:
            if self._pool is None:
                self._pool = WarmPool(self, n)
                pooled = sorted(self._pool.tiers)
        if pooled:  # a tier not usable now is logged by its refill thread, and pooled once it is
            log.info("warm pool: %d ready sandbox(es) per tier for %s", n, ", ".join(pooled))
        else:
            log.warning(
                "sandbox.warm_pool = %d but no Docker tier (docker, gvisor) is configured: calls start cold",
                n,
            )

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
        for t in self.tiers.values():  # after the pool's close: its refills' lost creates too
            if isinstance(t, DockerTier):
                t.reclaims.close()


def wrap_stdio_command(
    tier: str,
    command: str,
    args: list[str],
    env: Mapping[str, str],
    cwd: str | None,
    *,
    network: bool,
    limits: Limits | None = None,
    manager: SandboxManager,
    hidden: Sequence[str] = (),
) -> tuple[str, list[str]]:
    """argv to launch an stdio MCP server inside ``tier``, stdin/stdout connected.

    docker/gvisor: ``docker run -i --rm ...``; bwrap: ``/bin/sh -c`` launcher + bwrap.
    Read-only binds: the cwd and the folders of absolute-path command/args outside /usr.
    Network is off unless ``network`` (gvisor cannot grant it here: SandboxUnavailable).
    The server runs as uid/gid 65534: its files must be readable by that user.
    ``env`` stays off the command line: start the argv with ``env`` in its environment too.
    """
    return manager.wrap_stdio_command(
        tier, command, args, env, cwd, network=network, limits=limits, hidden=hidden
    )
