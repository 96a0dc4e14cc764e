"""Helpers to open real MCP client sessions to a real ``symbi`` process."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, AsyncIterator

from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import SYMBI


def gateway_params(config: Path, **env: str) -> StdioServerParameters:
    # The SDK passes a minimal environment; keep PYTHONPATH so a worktree's code is the one run.
    inherited = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    return StdioServerParameters(
        command=str(SYMBI), args=["mcp", "--config", str(config)], env={**inherited, **env} or None
    )


@contextlib.asynccontextmanager
async def stdio_session(config: Path, message_handler: Any = None, **kw: Any) -> AsyncIterator[ClientSession]:
    """A handshake-era (2025-11-25) SDK session to ``symbi mcp``."""
    async with stdio_client(gateway_params(config)) as (r, w):
        async with ClientSession(r, w, message_handler=message_handler, **kw) as s:
            await s.initialize()
            yield s
