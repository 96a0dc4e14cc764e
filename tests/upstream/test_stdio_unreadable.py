"""The stdio reader's answer to a line the SDK could not parse (``gateway.upstream.stdio``'s
``_unreadable``), in-process: a real ``Upstream`` over the real surrogate peer
(tests/peers/surrogate_server.py over stdio), each case through the fast lane and through the
SDK's client path (``tests/upstream/test_fastcall.py``'s ``running`` and ``sdk_path``).

tests/upstream/test_stdio_text.py and test_upstream_text.py attack the same through whole
gateways (subprocesses); here the reader runs in the test's process, so mutation testing can
see it.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractAsyncContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError, types

from gateway.errors import UpstreamError
from gateway.events import Event, LoggingSink
from gateway.upstream.session import Upstream
from tests.conftest import ROOT, RecordingSink
from tests.upstream.test_fastcall import running, sdk_path

pytestmark = pytest.mark.anyio
PEER = ROOT / "tests/peers/surrogate_server.py"
INTERNAL_ERROR, INVALID_PARAMS = -32603, -32602
REQUESTS = {
    "sampling": "/params/messages/0/content/text",
    "elicitation": "/params/message",
    "roots": "/params/_meta/note",
}
WAYS = ["lane", "sdk"]


def _way(up: Upstream, way: str) -> AbstractAsyncContextManager[Any]:
    return sdk_path(up) if way == "sdk" else nullcontext()


def _text(r: Any) -> str:
    assert isinstance(r, types.CallToolResult)
    return "".join(getattr(c, "text", "") for c in r.content)


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(
    ("where", "pointer"), [("result", "/result/content/0/text"), ("error", "/error/message")]
)
async def test_an_answer_that_is_not_utf8_fails_its_call_naming_where(
    tmp_path: Path, way: str, where: str, pointer: str
) -> None:
    async with running(tmp_path, PEER, timeout_s=15.0) as up, _way(up, way):
        with pytest.raises(UpstreamError) as e:
            await up.call_tool("t", {"where": where})
        error = e.value.mcp_error  # the upstream's answer, as the session got it
        assert isinstance(error, MCPError) and error.error.code == INTERNAL_ERROR
        assert pointer in error.error.message
        assert _text(await up.call_tool("ok", {"message": "next"})) == "next"  # the session goes on


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("where", ["notification", "progress"])
async def test_a_notification_that_is_not_utf8_is_dropped(tmp_path: Path, way: str, where: str) -> None:
    async with running(tmp_path, PEER, timeout_s=15.0) as up, _way(up, way):
        assert _text(await up.call_tool("t", {"where": where, "message": "hi"})) == "hi"


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("where", sorted(REQUESTS))
async def test_an_upstream_request_that_is_not_utf8_is_answered_on_its_stdin(
    tmp_path: Path, way: str, where: str
) -> None:
    """The error answer goes to the upstream at once (its wait, 10 s, would say "none"), and
    the refusal is an event naming where."""
    events = RecordingSink(LoggingSink())
    async with running(tmp_path, PEER, timeout_s=15.0, events=events) as up, _way(up, way):
        got = json.loads(_text(await up.call_tool("t", {"where": where})))
    assert "none" not in got, f"the upstream's {where} request got no answer"
    assert got["id"] == "up-1" and got["error"]["code"] == INVALID_PARAMS
    assert REQUESTS[where] in got["error"]["message"]
    refused = [d for t, d in events.events if t == Event.UPSTREAM_CLIENT_REQUEST]
    assert [(d["outcome"], REQUESTS[where] in d["reason"]) for d in refused] == [("refused", True)]


@pytest.mark.parametrize("way", WAYS)
async def test_a_line_that_is_not_a_message_is_one_warning_naming_the_upstream(
    tmp_path: Path, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A banner on stdout (valid text, not JSON-RPC): the SDK's parse failure stands (no
    refusal), with one warning per line naming the upstream (``up``), and the upstream serves."""
    noisy = tmp_path / "noisy.py"
    noisy.write_text(
        "import runpy, sys\n"
        "for i in range(2):\n"
        "    print(f'noisy banner line {i}', flush=True)\n"
        f"sys.argv = [{str(PEER)!r}]\n"
        f"runpy.run_path({str(PEER)!r}, run_name='__main__')\n"
    )
    events = RecordingSink(LoggingSink())
    with caplog.at_level(logging.WARNING, logger="symbi.upstream.stdio"):
        async with running(tmp_path, noisy, timeout_s=15.0, events=events) as up, _way(up, way):
            assert _text(await up.call_tool("ok", {"message": "served"})) == "served"
    lines = [r for r in caplog.records if r.name == "symbi.upstream.stdio" and r.levelno == logging.WARNING]
    assert [r.args[0] for r in lines if isinstance(r.args, tuple)] == ["up", "up"]
    assert [t for t, _ in events.events if t == Event.UPSTREAM_CLIENT_REQUEST] == []
