"""Every [runtime] key of the seed takes effect in a running gateway."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from gateway.assemble import make_gateway
from gateway.config import load_config
from gateway.context import Principal
from gateway.runtime import AgentState
from tests.conftest import write_config

pytestmark = pytest.mark.anyio


async def test_scheduler_threads_gc_interval_and_buffer_size(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        """
        [sandbox]
        code_tools = false
        [runtime]
        scheduler_threads = 3
        gc_interval_ms = 20
        agent_idle_timeout_s = 0.2
        message_buffer_size = 4096
        """,
    )
    gw = make_gateway(load_config(cfg, {}))
    async with gw.running():
        await anyio.sleep(0.1)
        # scheduler_threads sizes the worker pool for blocking work
        assert anyio.to_thread.current_default_thread_limiter().total_tokens == 3
        assert gw.runtime.message_buffer_size == 4096  # for the agent bus
        idle = gw.agents.for_session(Principal(id="p"), "c", "s1")
        with anyio.fail_after(5):  # the gc sweep (every 20 ms) ends the idle session, then forgets it
            while gw.agents.get(idle.id) is not None:
                await anyio.sleep(0.02)
        assert idle.state is AgentState.TERMINATED
