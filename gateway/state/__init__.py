"""State shared by gateway replicas (``[state]``): one backend interface per kind of state,
an in-process default and a shared implementation on an existing engine.

- rate limits: ``LocalRateLimiter`` (``CallCounters``) | ``RedisRateLimiter`` (``state.redis_url``)

``build_state`` makes them from the config; ``SharedState.watch`` is the gateway's
background task that keeps each backend's health current for ``/readyz``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from gateway.config.model import Config
from gateway.policy.counters import CallCounters
from gateway.state.health import Probe, safe_url
from gateway.state.limiter import LocalRateLimiter, RateLimiter, RedisRateLimiter

__all__ = ["LocalRateLimiter", "Probe", "RateLimiter", "RedisRateLimiter", "SharedState", "build_state", "safe_url"]


@dataclass
class SharedState:
    limiter: RateLimiter
    probes: list[Probe] = field(default_factory=list)
    interval_s: float = 1.0

    @property
    def shared(self) -> bool:
        return bool(self.probes)

    def status(self) -> dict[str, dict[str, object]]:
        return {p.kind: p.status() for p in self.probes}

    async def probe_once(self) -> None:
        for p in self.probes:
            try:
                with anyio.fail_after(self.interval_s * 2):
                    await p.ping()
            except Exception as e:  # noqa: BLE001 - any failure means "down"; the probe records why
                p.failed(e)
            else:
                p.ok()

    async def watch(self, _gw: object) -> None:
        """Background task: refresh every backend's health; close the async clients at the end."""
        try:
            while True:
                await self.probe_once()
                await anyio.sleep(self.interval_s)
        finally:
            with anyio.CancelScope(shield=True):
                if isinstance(self.limiter, RedisRateLimiter):
                    await self.limiter.aclose()


def build_state(config: Config, counters: CallCounters) -> SharedState:
    st = config.state
    if st.redis_url is None:
        return SharedState(LocalRateLimiter(counters))
    limiter = RedisRateLimiter(st.redis_url, counters, timeout_s=st.timeout_s)
    return SharedState(limiter, [limiter.probe], interval_s=st.probe_interval_s)
