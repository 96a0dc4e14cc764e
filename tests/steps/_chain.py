"""Running a built chain in the step tests."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.chain import CallNext
from gateway.context import CallContext


def run_chain(chain: CallNext, call: CallContext) -> Any:
    """``call`` through ``chain`` on a fresh event loop (a chain is typed as returning an
    awaitable; asyncio.run takes a coroutine)."""

    async def through() -> Any:
        return await chain(call)

    return asyncio.run(through())
