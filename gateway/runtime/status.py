"""``get_system_status``: the seed's HealthStatus, and the agent views of the admin surfaces.

    HealthStatus {overall_status, component_health, resource_utilization, recent_errors}

Components: each upstream (and its circuit breaker), the policy engine, the audit log, the
sandbox tiers, the scheduler, the hosted agents, and the principal holds while a suspension
is not in force everywhere. ``overall_status`` is ``unhealthy`` when a component calls must
pass (policy, audit) is down, ``degraded`` when an upstream is down, a breaker is open, a
hosted agent failed or a principal's suspension is not in force everywhere, else ``healthy``.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from gateway.runtime.agents import Agent
from gateway.runtime.core import AgentRuntime
from gateway.runtime.lifecycle import AgentState
from gateway.runtime.scheduler import LEVELS

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config.model import Config
    from gateway.runtime.hosted import HostedAgents

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def agent_row(rt: AgentRuntime, agent: Agent) -> dict[str, Any]:
    limits = rt.limits_of(agent)
    return {
        **agent.as_json(),
        "in_flight": agent.in_flight,
        "limits": limits.as_json(),
        "usage": rt.usage_of(agent).as_json(limits) if agent.id in rt.usage else None,
    }


def agent_rows(rt: AgentRuntime) -> list[dict[str, Any]]:
    return [agent_row(rt, a) for a in sorted(rt.agents, key=lambda a: a.created)]


def _policy(gw: Gateway) -> dict[str, Any]:
    eng = gw.policy
    if eng is None:
        return {"status": DEGRADED, "detail": "policy off (security.unsafe_disable_policies)"}
    try:
        doc = eng.status()
    except Exception:  # noqa: BLE001 - fail closed: a status that cannot be read is not loaded
        doc = {}
    if not doc.get("loaded"):
        return {"status": UNHEALTHY, "detail": "no policy loaded"}
    refused = doc.get("refused")
    if refused:  # another replica's policy failed here: this one still decides with the old one
        return {
            "status": DEGRADED,
            "detail": f"published policy version {refused['version']} refused: {refused['error']}",
        }
    return {"status": HEALTHY, "detail": "loaded"}


def _audit(gw: Gateway) -> dict[str, Any]:
    log = gw.audit
    if log is None:
        return {"status": DEGRADED, "detail": "audit off (security.unsafe_disable_audit)"}
    try:
        log.ensure_writable()
        return {"status": HEALTHY, "detail": "writable"}
    except Exception as e:  # noqa: BLE001 - fail closed: not writable is unhealthy
        return {"status": UNHEALTHY, "detail": f"not writable: {type(e).__name__}"}


def components(gw: Gateway) -> dict[str, dict[str, Any]]:
    rt = gw.runtime
    breakers = rt.breakers.states()
    out: dict[str, dict[str, Any]] = {"policy": _policy(gw), "audit": _audit(gw)}
    for name, up in gw.upstreams.items():
        breaker = breakers.get(name, "closed")
        ok = up.state == "up" and breaker == "closed"
        out[f"upstream:{name}"] = {
            "status": HEALTHY if ok else DEGRADED,
            "state": up.state,
            "breaker": breaker,
        }
    state = gw.state
    if state is not None:  # a shared-state backend that is down refuses calls: not ready
        for kind, doc in state.status().items():
            out[f"state:{kind}"] = {"status": HEALTHY if doc["up"] else UNHEALTHY, **doc}
    sched = rt.scheduler
    full = sched.queue_depth() >= sched.queue_limit
    out["scheduler"] = {
        "status": DEGRADED if full else HEALTHY,
        "in_flight": sched.in_flight,
        "queued": sched.queue_depth(),
    }
    held = principal_holds(rt)
    if held is not None:
        out["principal_holds"] = held
    for agent in rt.agents:
        if agent.hosted and agent.state is AgentState.FAILED:
            out[f"agent:{agent.name}"] = {
                "status": DEGRADED,
                "state": agent.state.value,
                "reason": agent.reason,
            }
    return out


def principal_holds(rt: AgentRuntime) -> dict[str, Any] | None:
    """Degraded while a principal's suspension is not in force everywhere: a session agent is
    suspended and its principal held nowhere (past the bound of held principals), or Redis
    refused a hold this process keeps for itself (``unshared``: the other replicas let that
    principal in). Logged at ERROR only before (session 42); None while neither."""
    holds = rt.holds
    unshared = holds.unshared
    not_held = {
        a.owner
        for a in rt.agents
        if not a.hosted and a.owner and a.state is AgentState.SUSPENDED and not holds.holding(a.owner)
    }
    if not not_held and not unshared:
        return None
    bounds = []  # the bound that refused each kind: this process's, Redis's (session 42)
    if not_held:
        bounds.append(f"{holds.limit} principals held in this process refused those not held")
    shared = holds.board.limit if holds.board is not None and unshared else None
    if shared is not None:
        bounds.append(f"{shared} held on the shared state (Redis) refused those held here only")
    out: dict[str, Any] = {
        "status": DEGRADED,
        "detail": f"{'; '.join(bounds)}: some suspensions are not in force everywhere; "
        "clear those no longer needed (symbi agents suspended), then suspend these again",
        "held": len(holds),
        "limit": holds.limit,
        "not_held": sorted(not_held),
        "held_in_this_process_only": sorted(unshared),
    }
    if shared is not None:
        out["shared_limit"] = shared
    return out


def overall(comps: dict[str, dict[str, Any]]) -> str:
    if any(c["status"] == UNHEALTHY for c in comps.values()):
        return UNHEALTHY
    if any(c["status"] == DEGRADED for c in comps.values()):
        return DEGRADED
    return HEALTHY


def utilization(rt: AgentRuntime) -> dict[str, Any]:
    by_state = Counter(a.state.value for a in rt.agents)
    sched = rt.scheduler
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "agents": {
            "live": rt.agents.live(),
            "max": rt.config.runtime.max_concurrent_agents,
            "by_state": {s.value: by_state.get(s.value, 0) for s in AgentState},
        },
        "scheduler": {
            "in_flight": sched.in_flight,
            "max_in_flight": sched.max_in_flight,
            "queued": sched.queue_depth(),
            "queue_limit": sched.queue_limit,
            "queued_by_priority": {str(p): sched.queue_depth(p) for p in range(LEVELS)},
            "max_in_flight_per_principal": sched.max_in_flight_per_principal,
            "queue_limit_per_principal": sched.queue_limit_per_principal,
            "refused_per_principal": sched.refused_per_principal,  # at queue_limit_per_principal
            "worker_threads": rt.config.runtime.scheduler_threads,
        },
        "pool": {"strategy": rt.pool.strategy, "slots": rt.pool.as_json()},
        "process": {
            "pid": os.getpid(),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        },
    }


def hosted_agents(config: Config, rt: AgentRuntime, hosted: HostedAgents | None) -> dict[str, Any]:
    """Every hosted agent and the process that runs it. One gateway: this one, as it sees
    them. With shared state: as the lease holders last wrote it to Redis, read by every
    replica every few seconds (``read_at``; an agent is None while no process holds its lease),
    so whichever replica answers shows the same."""
    from gateway.state.leases import process_name

    if hosted is not None and hosted.leased is not None:
        return hosted.leased.status()
    here = process_name(config.data_dir)
    agents: dict[str, dict[str, Any] | None] = {}
    for name, ac in config.agents.items():
        run = rt.agents.by_name(name)
        agents[name] = (
            {
                "holder": here,
                "state": run.state.value if run is not None else "Initializing",
                "run": hosted.runs.get(name, 0) if hosted is not None else 0,
                "agent": run.id if run is not None else None,
            }
            if ac.enabled
            else None
        )
    return {"read_at": time.time(), "here": here, "agents": agents}


def get_system_status(gw: Gateway) -> dict[str, Any]:
    """The seed's HealthStatus for this gateway, as JSON."""
    rt = gw.runtime
    comps = components(gw)
    return {
        "overall_status": overall(comps),
        "component_health": comps,
        "resource_utilization": utilization(rt),
        "recent_errors": list(rt.recent_errors)[-20:],
        "hosted_agents": hosted_agents(gw.config, rt, gw.hosted),
        "time": time.time(),
        "uptime_s": round(time.time() - rt.started, 3),
    }
