"""One least-recently-used store of decisions, bounded in entries and in characters of keys.

A thread keeps two per policy (``gateway.policy.engine``): one for the listing decisions whose
key holds the caller's agent id (an HTTP session's agent is new per session, so most of them
are never asked again once the session ends) and one for every other decision. A session's
dead entries then push out only others of their kind, never a call's or a shared listing's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.context import Decision
from gateway.policy.inputkey import InputReads


@dataclass(slots=True)
class DecisionLru:
    entries: OrderedDict[str, Decision] = field(default_factory=OrderedDict)
    chars: int = 0  # the characters of the keys

    def get(self, key: str) -> Decision | None:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: str, decision: Decision, max_entries: int, max_chars: int) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.chars -= len(key)
        self.entries[key] = decision
        self.chars += len(key)
        while self.entries and (len(self.entries) > max_entries or self.chars > max_chars):
            gone, _ = self.entries.popitem(last=False)
            self.chars -= len(gone)


def per_agent(input: Mapping[str, Any], reads: InputReads) -> bool:
    """Whether ``input`` is a listing whose cache key holds its caller's agent id."""
    return reads.agent_id and input.get("action") == "list" and input.get("agent") is not None
