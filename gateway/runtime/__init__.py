"""The agent runtime (the seed's runtime core): agents with gateway-made identities, the
lifecycle state machine, and (built on these) the scheduler, budgets and hosted agents.

- ``gateway.runtime.identity``: how an ``AgentId`` is made from principal, client and session.
- ``gateway.runtime.agents``: ``Agent`` records and the ``AgentRegistry`` (lookup by id and by
  name; register/unregister hooks for other components, e.g. the bus's key store).
- ``gateway.runtime.lifecycle``: the seed's states and the only transitions allowed.
"""

from __future__ import annotations

from gateway.errors import InvalidTransition
from gateway.runtime.agents import Agent, AgentRegistry
from gateway.runtime.lifecycle import AgentState

__all__ = ["Agent", "AgentRegistry", "AgentState", "InvalidTransition"]
