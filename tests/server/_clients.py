"""Helpers to open real MCP client sessions to a real ``symbi`` process."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from mcp import ClientSession, StdioServerParameters, stdio_client

from tests.conftest import ROOT, SYMBI

# 21 digits in a row (one CI run's SDK client drew it): 19 once in some 1,300 random ones
DIGITS_TRACEPARENT = "00-552441630219779708567ec7773a2aca-758c461947594451-02"


def gateway_params(config: Path, **env: str) -> StdioServerParameters:
    # The SDK passes only a short allow-list of the environment to the child: name this
    # tree explicitly, so the gateway under test is this checkout's code (not an installed copy).
    return StdioServerParameters(
        command=str(SYMBI), args=["mcp", "--config", str(config)], env={"PYTHONPATH": str(ROOT), **env}
    )


@contextlib.asynccontextmanager
async def stdio_session(
    config: Path, message_handler: Any = None, errlog: TextIO = sys.stderr, **kw: Any
) -> AsyncIterator[ClientSession]:
    """A handshake-era (2025-11-25) SDK session to ``symbi mcp`` (its stderr to ``errlog``)."""
    async with stdio_client(gateway_params(config), errlog=errlog) as (r, w):
        async with ClientSession(r, w, message_handler=message_handler, **kw) as s:
            await s.initialize()
            yield s
