"""The resource manager: the seed's ResourceLimits, per-agent accounting, and placement.

- ``ResourceLimits``: memory, CPU, disk I/O, network I/O, execution time (the seed's five),
  plus call concurrency. Hosted agents get them enforced by their sandbox tier's cgroup
  (memory.max, cpu.max, io.max, pids); every agent's calls are held to the execution time.
- ``Usage``: what an agent used (calls, busy seconds, bytes through the gateway; for hosted
  agents the cgroup's peak memory and CPU seconds), reported as used / limit.
- ``ResourcePool``: a finite set of slots (CPU + memory bins) on which hosted agents are
  placed with the seed's three strategies: first-fit (first slot with room: fastest),
  best-fit (the slot left fullest: least waste) and priority (like best-fit, but a higher
  priority agent may displace the lowest-priority placement when nothing fits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway.config.sections import ResourcesSection
from gateway.errors import BudgetExceeded

Strategy = Literal["first-fit", "best-fit", "priority"]


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    memory_mb: int
    cpu_cores: float
    disk_io_mbps: int
    network_io_mbps: int
    execution_timeout_s: float
    max_concurrent_calls: int
    network: bool = False

    @classmethod
    def from_config(cls, r: ResourcesSection) -> ResourceLimits:
        return cls(
            memory_mb=r.memory_mb,
            cpu_cores=r.cpu_cores,
            disk_io_mbps=r.disk_io_mbps,
            network_io_mbps=r.network_io_mbps,
            execution_timeout_s=r.execution_timeout_s,
            max_concurrent_calls=r.max_concurrent_calls,
            network=r.network,
        )

    def as_json(self) -> dict[str, object]:
        return {
            "memory_mb": self.memory_mb,
            "cpu_cores": self.cpu_cores,
            "disk_io_mbps": self.disk_io_mbps,
            "network_io_mbps": self.network_io_mbps,
            "execution_timeout_s": self.execution_timeout_s,
            "max_concurrent_calls": self.max_concurrent_calls,
            "network": self.network,
        }


@dataclass(slots=True)
class Usage:
    """What one agent used so far (kept for every agent; cheap counters)."""

    calls: int = 0
    busy_s: float = 0.0  # summed call durations (execution time)
    longest_call_s: float = 0.0
    bytes_out: int = 0  # result bytes it received through the gateway
    memory_peak_mb: float = 0.0  # hosted: the cgroup's memory.peak
    cpu_s: float = 0.0  # hosted: the cgroup's cpu.stat usage

    def as_json(self, limits: ResourceLimits) -> dict[str, object]:
        return {
            "calls": self.calls,
            "execution_s": {
                "used": round(self.busy_s, 3),
                "longest_call": round(self.longest_call_s, 3),
                "limit_per_call": limits.execution_timeout_s,
            },
            "result_bytes": self.bytes_out,
            "memory_mb": {"peak": round(self.memory_peak_mb, 1), "limit": limits.memory_mb},
            "cpu_s": {"used": round(self.cpu_s, 3), "cores": limits.cpu_cores},
        }


@dataclass(slots=True)
class _Slot:
    cpu: float
    memory_mb: int
    placed: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # agent -> (cpu, mem, priority)

    @property
    def free_cpu(self) -> float:
        return self.cpu - sum(c for c, _, _ in self.placed.values())

    @property
    def free_memory(self) -> int:
        return self.memory_mb - sum(m for _, m, _ in self.placed.values())

    def fits(self, cpu: float, mem: int) -> bool:
        return self.free_cpu + 1e-9 >= cpu and self.free_memory >= mem


class ResourcePool:
    """Placement of hosted agents on ``slots`` bins of (cpu, memory) with one strategy."""

    def __init__(self, slots: int, slot_cpu: float, slot_memory_mb: int, strategy: Strategy) -> None:
        self.strategy = strategy
        self.slots = [_Slot(slot_cpu, slot_memory_mb) for _ in range(slots)]

    def allocate(self, agent: str, limits: ResourceLimits, priority: int) -> tuple[int, list[str]]:
        """The slot index for ``agent`` and the agents displaced to make room (priority only)."""
        cpu, mem = limits.cpu_cores, limits.memory_mb
        fitting = [i for i, s in enumerate(self.slots) if s.fits(cpu, mem)]
        if fitting:
            index = (
                fitting[0]
                if self.strategy == "first-fit"
                else min(
                    fitting, key=lambda i: (self.slots[i].free_cpu - cpu, self.slots[i].free_memory - mem)
                )
            )
            self.slots[index].placed[agent] = (cpu, mem, priority)
            return index, []
        if self.strategy == "priority":
            displaced = self._displace(agent, cpu, mem, priority)
            if displaced is not None:
                return displaced
        raise BudgetExceeded(
            f"no resource slot has room for {agent} ({cpu} cores, {mem} MB; runtime.allocation = {self.strategy})",
            reasons=[f"{len(self.slots)} slots of runtime.pool_slot_cpu / pool_slot_memory_mb are full"],
        )

    def _displace(self, agent: str, cpu: float, mem: int, priority: int) -> tuple[int, list[str]] | None:
        for i, s in enumerate(self.slots):
            lower = sorted((p, a) for a, (_, _, p) in s.placed.items() if p < priority)
            freed_cpu, freed_mem, victims = s.free_cpu, s.free_memory, []
            for _, a in lower:
                c, m, _ = s.placed[a]
                freed_cpu, freed_mem = freed_cpu + c, freed_mem + m
                victims.append(a)
                if freed_cpu + 1e-9 >= cpu and freed_mem >= mem:
                    for v in victims:
                        del s.placed[v]
                    s.placed[agent] = (cpu, mem, priority)
                    return i, victims
        return None

    def placements(self) -> list[dict[str, tuple[float, int, int]]]:
        """Every slot's agents, as ``restore`` puts them back (a displacement undone)."""
        return [dict(s.placed) for s in self.slots]

    def restore(self, saved: list[dict[str, tuple[float, int, int]]]) -> None:
        for s, placed in zip(self.slots, saved, strict=True):
            s.placed = dict(placed)

    def release(self, agent: str) -> None:
        for s in self.slots:
            s.placed.pop(agent, None)

    def as_json(self) -> list[dict[str, object]]:
        return [
            {
                "cpu": s.cpu,
                "memory_mb": s.memory_mb,
                "free_cpu": round(s.free_cpu, 3),
                "free_memory_mb": s.free_memory,
                "agents": sorted(s.placed),
            }
            for s in self.slots
        ]
