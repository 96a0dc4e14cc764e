"""The agent step (just inside audit): the calling agent's lifecycle around each call.

A suspended or terminated agent's call stops here, before resolution, verification, policy
or dispatch, so it never reaches an upstream. Otherwise the agent is Running while the call
is in flight (Ready again when its last call ends), its execution time is accounted, and a
policy denial counts toward ``runtime.suspend_after_denials``.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.chain import CallNext
from gateway.context import CallContext
from gateway.runtime.core import AgentRuntime


class AgentStep:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def __call__(self, call: CallContext, call_next: CallNext) -> Any:
        agent = self.runtime.agents.get(call.principal.agent)
        if agent is None:  # no session agent (never for MCP requests; the fronts always make one)
            return await call_next(call)
        try:
            self.runtime.begin(agent, f"{call.kind} {call.target}")
        except Exception as e:
            self.runtime.note_error(agent, e, call.target)  # refused: on the status page's recent errors
            raise
        started = time.perf_counter()
        try:
            return await call_next(call)
        except Exception as e:
            self.runtime.note_error(agent, e, call.target)
            raise
        finally:
            self.runtime.end(agent, time.perf_counter() - started, call.result_bytes)
