"""The seed's agent lifecycle, exactly (运行时核心 / 代理生命周期控制器).

    [*] --> Initializing
    Initializing --> Ready: Valid Config      Initializing --> Failed: Invalid Config
    Ready --> Running: Task Assigned          Running --> Ready: Task Complete
    Running --> Suspended: Policy Violation   Suspended --> Running: Policy Cleared
    Suspended --> Terminated: Manual Override Ready --> Terminated: Shutdown
    Failed --> Terminated                     Terminated --> [*]

Any other pair is refused with ``InvalidTransition``; nothing else changes an agent's state.
"""

from __future__ import annotations

from enum import StrEnum

from gateway.errors import InvalidTransition


class AgentState(StrEnum):
    INITIALIZING = "Initializing"
    READY = "Ready"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    FAILED = "Failed"
    TERMINATED = "Terminated"


# (from, to) -> the seed's label for the edge
TRANSITIONS: dict[tuple[AgentState, AgentState], str] = {
    (AgentState.INITIALIZING, AgentState.READY): "valid config",
    (AgentState.INITIALIZING, AgentState.FAILED): "invalid config",
    (AgentState.READY, AgentState.RUNNING): "task assigned",
    (AgentState.RUNNING, AgentState.READY): "task complete",
    (AgentState.RUNNING, AgentState.SUSPENDED): "policy violation",
    (AgentState.SUSPENDED, AgentState.RUNNING): "policy cleared",
    (AgentState.SUSPENDED, AgentState.TERMINATED): "manual override",
    (AgentState.READY, AgentState.TERMINATED): "shutdown",
    (AgentState.FAILED, AgentState.TERMINATED): "failed",
}


def check_transition(agent_id: str, src: AgentState, dst: AgentState) -> str:
    """The edge's label, or ``InvalidTransition`` naming the refused pair."""
    label = TRANSITIONS.get((src, dst))
    if label is None:
        allowed = sorted(d.value for (s, d) in TRANSITIONS if s == src)
        raise InvalidTransition(
            f"agent {agent_id}: {src.value} -> {dst.value} is not a lifecycle transition",
            reasons=[f"from {src.value} an agent may go to: {', '.join(allowed) or 'nothing'}"],
        )
    return label
