"""The policy input document, built from a ``CallContext`` and the recent-call counters.

The shape is documented (with an example) in ``gateway/policy/README.md``; ``policies.rego``
and any user policy read exactly these fields.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from gateway.context import AgentInfo, CallContext, Principal, ToolInfo, UpstreamInfo

Action = Literal["call", "list"]


class CallCounters:
    """Sliding windows of call times per principal (1 h) and per principal+tool (1 min).

    Thread-safe. ``try_acquire`` is the rate limiter: it records a call only if the
    principal+tool window is below the limit.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._by_principal: dict[str, deque[float]] = {}
        self._by_tool: dict[tuple[str, str], deque[float]] = {}

    @staticmethod
    def _prune(q: deque[float], horizon: float) -> None:
        while q and q[0] <= horizon:
            q.popleft()

    def principal_counts(self, principal: str) -> tuple[int, int]:
        """(calls in the last minute, calls in the last hour) by ``principal``."""
        now = self._clock()
        with self._lock:
            q = self._by_principal.get(principal)
            if not q:
                return 0, 0
            self._prune(q, now - 3600)
            minute = sum(1 for t in q if t > now - 60)
            return minute, len(q)

    def tool_count(self, principal: str, tool: str) -> int:
        """Calls of ``tool`` by ``principal`` in the last minute."""
        now = self._clock()
        with self._lock:
            q = self._by_tool.get((principal, tool))
            if not q:
                return 0
            self._prune(q, now - 60)
            return len(q)

    def try_acquire(self, principal: str, tool: str, limit_per_minute: int | None) -> bool:
        """Record one call unless it would exceed ``limit_per_minute`` (None: no limit)."""
        now = self._clock()
        with self._lock:
            tq = self._by_tool.setdefault((principal, tool), deque())
            self._prune(tq, now - 60)
            if limit_per_minute is not None and len(tq) >= limit_per_minute:
                return False
            tq.append(now)
            pq = self._by_principal.setdefault(principal, deque())
            self._prune(pq, now - 3600)
            pq.append(now)
            return True


def _rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns / 1e9, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tool_input(tool: ToolInfo) -> dict[str, Any]:
    return {
        "name": tool.name,
        "original_name": tool.original_name,
        "upstream": tool.upstream,
        "annotations": dict(tool.annotations),
        "verification": tool.verification,
        "key_fingerprint": tool.key_fingerprint,
        "definition_hash": tool.definition_hash,
        "code_tool": bool(tool.code_tool),
        "verification_mode": tool.verification_mode,
        "screening": tool.screening.as_input(),
    }


def build_input(
    *,
    principal: Principal,
    kind: str,
    target: str,
    action: Action = "call",
    tool: ToolInfo | None = None,
    upstream: UpstreamInfo | None = None,
    arguments: dict[str, Any] | None = None,
    session_id: str | None = None,
    counters: CallCounters | None = None,
    now_ns: int | None = None,
    agent: AgentInfo | None = None,
) -> dict[str, Any]:
    """The input document for one decision (see README for the fields)."""
    now_ns = now_ns if now_ns is not None else time.time_ns()
    minute, hour = counters.principal_counts(principal.qualified) if counters else (0, 0)
    tool_minute = counters.tool_count(principal.qualified, tool.name) if counters and tool else 0
    if upstream is not None:
        up: dict[str, Any] = upstream.as_input()
    else:
        up = {"name": tool.upstream if tool else None, "domain": None, "transport": None}
    return {
        "action": action,
        "kind": kind,
        "target": target,
        "principal": principal.as_input(),
        "agent": _agent_input(principal, agent),
        "upstream": up,
        "tool": tool_input(tool) if tool else None,
        "arguments": dict(arguments or {}),
        "context": {
            "time": _rfc3339(now_ns),
            "unix": now_ns // 1_000_000_000,
            "session_id": session_id,
            "calls_last_minute": minute,
            "calls_last_hour": hour,
            "tool_calls_last_minute": tool_minute,
        },
    }


def _agent_input(principal: Principal, agent: AgentInfo | None) -> dict[str, Any] | None:
    if agent is not None and agent.id == principal.agent:
        return agent.as_input()
    if principal.agent is None:
        return None
    # an id without the runtime's record (a component calling on an agent's behalf): id only
    return {"id": principal.agent, "name": None, "state": None, "priority": 0, "hosted": False}


def input_for_call(call: CallContext, counters: CallCounters | None = None) -> dict[str, Any]:
    """The input document for the request ``call`` (action ``call``)."""
    return build_input(
        principal=call.principal,
        kind=call.kind,
        target=call.target,
        tool=call.tool,
        upstream=call.upstream,
        arguments=call.arguments,
        session_id=call.session_id,
        counters=counters,
        now_ns=call.started_ns,
        agent=call.agent,
    )
