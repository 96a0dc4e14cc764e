"""An in-process engine's decisions taken together when calls ask at once.

A regorus evaluation of the default policy takes ~65 µs in a tight loop and ~130-150 µs in the
gateway under load, where the rest of each call (HTTP parsing, the chain, the audit record) has
pushed the engine's code and data out of the CPU's caches since its last decision: a `/tmp`
harness that touched 4 MiB between evaluations measured 125 µs one at a time and 76 µs eight
back to back. So when other calls are in flight, a decision is asked here and the decisions
asked during one turn of the event loop are taken one after the other at its end
(``loop.call_soon``), each as a lone call's would be: the policy step hands over its input,
decision and admission in one piece (``PolicyStep._decide_now``), so each decision reads the
counts of every call admitted before it. A lone call (one call in flight: a sequential client)
is decided at once by its caller, with no wait.

Nothing changes but when a decision is made: each is the engine's decision for its own input
(its cache, its reload, its failures as they are), given to its own caller; a caller that went
away before its turn (cancelled) is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Together:
    """The work (a decision) asked during one loop turn, done back to back at its end. Used on
    one event loop at a time (a new loop starts afresh)."""

    __slots__ = ("_asked", "_loop")

    def __init__(self) -> None:
        self._asked: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, work: Callable[[], T]) -> T:
        """``work()``'s result (or its exception), done at the end of this turn."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # nothing of a previous loop's is waited for on this one
            self._loop, self._asked = loop, []
        waiter: asyncio.Future[T] = loop.create_future()
        self._asked.append((work, waiter))
        if len(self._asked) == 1:
            loop.call_soon(self._take)  # after the calls already due in this turn ask too
        return await waiter

    def _take(self) -> None:
        asked, self._asked = self._asked, []
        for i, (work, waiter) in enumerate(asked):
            if waiter.done():  # its caller was cancelled meanwhile
                continue
            try:
                waiter.set_result(work())
            except Exception as e:  # noqa: BLE001 - the caller's own failure, raised where it awaits
                waiter.set_exception(e)
            except BaseException:  # interrupted: no caller after it waits for ever
                for _, rest in asked[i:]:
                    rest.cancel()
                raise
