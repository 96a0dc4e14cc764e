"""The requests this process's agents received and may still answer (``Bus.reply``).

Kept per agent and bounded in all (``MAX_OPEN_REQUESTS`` by default). Past the bound the
agent holding the most gives up its oldest: one agent (one principal) receiving requests
without end closes its own, never another's (a single oldest-first list let a principal that
flooded its own second agent close every other principal's open requests).
"""

from __future__ import annotations

from collections import OrderedDict


class OpenRequests:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_agent: dict[str, OrderedDict[str, tuple[str, int]]] = {}
        self._total = 0

    def __len__(self) -> int:
        return self._total

    def add(self, agent: str, request_id: str, requester: str, expires_ms: int) -> None:
        held = self._by_agent.setdefault(agent, OrderedDict())
        if request_id not in held:
            self._total += 1
        held[request_id] = (requester, expires_ms)
        while self._total > self.limit:
            # only past the bound (a flood): the agent holding the most, O(agents) once
            most = max(self._by_agent, key=lambda a: len(self._by_agent[a]))
            self._drop(most, next(iter(self._by_agent[most])))

    def pop(self, agent: str, request_id: str) -> tuple[str, int] | None:
        held = self._by_agent.get(agent)
        if held is None or request_id not in held:
            return None
        found = held[request_id]
        self._drop(agent, request_id)
        return found

    def forget(self, agent: str) -> None:
        """The agent left the bus: what it held goes."""
        self._total -= len(self._by_agent.pop(agent, ()))

    def _drop(self, agent: str, request_id: str) -> None:
        held = self._by_agent[agent]
        del held[request_id]
        self._total -= 1
        if not held:
            del self._by_agent[agent]
