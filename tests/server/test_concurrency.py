"""Every reply goes to its own caller: 8 client sessions x 50 concurrent calls, unique messages.

A well-known peer gateway hands another caller's reply back for 15-31% of calls in exactly
this test. Here: 8 SDK client sessions over streamable HTTP against one ``symbi serve``,
and 8 stdio clients each with its own ``symbi mcp`` process, all calling server-everything's
``echo`` with a message no other call uses; each reply must echo that call's own message.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import EVERYTHING_JS, require_peers, write_config
from tests.server._clients import stdio_session
from tests.server._http import serve

pytestmark = [pytest.mark.anyio, pytest.mark.npm, pytest.mark.slow]

SESSIONS = 8
CALLS = 50
TOOL = "everything__echo"


def _config(tmp_path: Path) -> Path:
    require_peers()
    # Policy is off on purpose: routing is under test here (policy has its own tests); the
    # audit log stays on, so its writer sees the concurrent calls too.
    return write_config(
        tmp_path,
        f"""
        [security]
        enforce_policies = false

        [sandbox]
        code_tools = false

        [http]
        anonymous_principal = "concurrency-test"
        access_log = false

        [servers.everything]
        command = "node"
        args = ["{EVERYTHING_JS}", "stdio"]
        verification = "warn"
        """,
    )


class Tally:
    """Replies seen, by kind, across every session."""

    def __init__(self) -> None:
        self.sent: set[str] = set()
        self.ok = 0
        self.misrouted: list[tuple[str, str]] = []
        self.failed: list[tuple[str, str]] = []

    def check(self, message: str, reply: str | None) -> None:
        if reply == f"Echo: {message}":
            self.ok += 1
        elif reply is not None and reply.startswith("Echo: ") and reply[len("Echo: ") :] in self.sent:
            self.misrouted.append((message, reply))
        else:
            self.failed.append((message, str(reply)))


async def _calls(session: ClientSession, tag: str, tally: Tally) -> None:
    messages = [f"{tag}-call{i}-{os.urandom(6).hex()}" for i in range(CALLS)]
    tally.sent.update(messages)

    async def one(msg: str) -> None:
        result = await session.call_tool(TOOL, {"message": msg})
        text = None if result.is_error else next((b.text for b in result.content if hasattr(b, "text")), None)
        tally.check(msg, text)

    async with anyio.create_task_group() as tg:
        for msg in messages:
            tg.start_soon(one, msg)


@contextlib.asynccontextmanager
async def _http_session(url: str) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as hc,
        streamable_http_client(url, http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        yield s


def _assert_all_own(tally: Tally) -> None:
    assert tally.misrouted == [], (
        f"{len(tally.misrouted)} replies went to another caller: {tally.misrouted[:5]}"
    )
    assert tally.failed == [], f"{len(tally.failed)} calls failed: {tally.failed[:5]}"
    assert tally.ok == SESSIONS * CALLS


async def test_http_sessions_each_get_their_own_replies(tmp_path: Path) -> None:
    tally = Tally()
    with serve(_config(tmp_path)) as base:
        async with contextlib.AsyncExitStack() as stack:
            sessions = [
                await stack.enter_async_context(_http_session(base + "/mcp")) for _ in range(SESSIONS)
            ]
            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for n, s in enumerate(sessions):
                        tg.start_soon(_calls, s, f"http{n}", tally)
    _assert_all_own(tally)


async def test_stdio_clients_each_get_their_own_replies(tmp_path: Path) -> None:
    config = _config(tmp_path)
    tally = Tally()
    opened, all_open = 0, anyio.Event()

    async def client(n: int) -> None:
        nonlocal opened
        # Start the 8 gateways in parallel, then call only once every session is open, so
        # the calls of all clients overlap.
        async with stdio_session(config) as s:
            opened += 1
            if opened == SESSIONS:
                all_open.set()
            await all_open.wait()
            await _calls(s, f"stdio{n}", tally)

    with anyio.fail_after(150):
        async with anyio.create_task_group() as tg:
            for n in range(SESSIONS):
                tg.start_soon(client, n)
    _assert_all_own(tally)


def test_tally_flags_a_reply_meant_for_another_caller() -> None:
    # The check itself must be able to fail: another call's echo is "misrouted", not "ok".
    tally = Tally()
    tally.sent.update({"a-1", "b-1"})
    tally.check("a-1", "Echo: b-1")
    tally.check("b-1", "Echo: b-1")
    tally.check("a-1", "something else")
    assert tally.misrouted == [("a-1", "Echo: b-1")]
    assert tally.ok == 1
    assert tally.failed == [("a-1", "something else")]
