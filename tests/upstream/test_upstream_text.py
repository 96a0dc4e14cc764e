"""Whatever an upstream sends with text that is not valid UTF-8 is answered at once, naming where.

An upstream (stdio or streamable HTTP) can write the JSON escape ``"\\ud800"``, a lone surrogate
once parsed, which the SDK's parsers refuse. Attacks, each through both fronts (``symbi mcp``
and ``symbi serve``) against a real peer (tests/peers/surrogate_server.py over streamable HTTP
and over stdio), the audit log verified after each:

- an answer (a result, an error) from an HTTP upstream, as JSON and as SSE: the SDK made it a
  PARSE_ERROR (-32700, the code for a client's own unparseable request) naming nothing; now
  -32603 naming the JSON pointer, and the next call runs;
- a notification (log message, progress) in a call's SSE stream: the SDK failed the call with
  -32700; now it is dropped with a log line that names it, and the call answers;
- a request of the upstream's (sampling/createMessage, elicitation/create, roots/list), over
  both transports: it was never answered (the upstream waited until it gave up); now it gets
  a JSON-RPC error at once naming where, and the refusal is an audit event.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.conftest import (
    ROOT,
    SYMBI,
    audit_verifies,
    initialize_request,
    surrogate_http,
    symbi_audit,
    symbi_env,
    write_config,
)
from tests.server._http import serve_process

PEER = ROOT / "tests/peers/surrogate_server.py"
INTERNAL_ERROR, INVALID_PARAMS = -32603, -32602
PEER_WAIT_S = "8"  # how long the peer waits for the answer to its own request before it says "none"
REQUESTS = {
    "sampling": "/params/messages/0/content/text",
    "elicitation": "/params/message",
    "roots": "/params/_meta/note",
}
NOTIFICATIONS = {"notification": "/params/data", "progress": "/params/message"}


@pytest.fixture(scope="module")
def http_peer() -> Iterator[str]:
    """The peer over streamable HTTP on a loopback port (its modes picked per call)."""
    with _http_peer() as url:
        yield url


def _http_peer(**env: str) -> contextlib.AbstractContextManager[str]:
    return surrogate_http(PEER_WAIT_S, **env)


def _config(folder: Path, http_peer: str) -> Path:
    """The peer over HTTP as ``mut``, over stdio as ``probe`` (names the test policy data lets
    run unverified)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder,
        f"""
        [servers.mut]
        url = "{http_peer}"
        verification = "warn"
        [servers.probe]
        command = "{sys.executable}"
        args = ["{PEER}"]
        env = {{ SURROGATE_WAIT_S = "{PEER_WAIT_S}" }}
        verification = "warn"
        """,
    )


class StdioFront:
    """A real ``symbi mcp`` spoken to line by line; its log (stderr) kept in a file."""

    def __init__(self, config: Path) -> None:
        self.log = config.parent / "mcp-stderr.log"
        with open(self.log, "wb") as err:
            self.p = subprocess.Popen(
                [str(SYMBI), "mcp", "--config", str(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=symbi_env(),
            )
        self._ids = iter(range(2, 1_000_000))
        self._send(initialize_request())
        assert "result" in self._recv(1)
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        rid = next(self._ids)
        self._send({"jsonrpc": "2.0", "id": rid, "method": "tools/list"})
        self.tools = [t["name"] for t in self._recv(rid)["result"]["tools"]]

    def _send(self, obj: dict[str, Any]) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(obj).encode() + b"\n")
        self.p.stdin.flush()

    def _recv(self, rid: int) -> dict[str, Any]:
        assert self.p.stdout is not None
        while True:
            msg: dict[str, Any] = json.loads(self.p.stdout.readline())
            if msg.get("id") == rid:
                return msg

    async def call(self, tool: str, arguments: dict[str, Any]) -> Outcome:
        rid = next(self._ids)
        self._send(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments},
            }
        )
        answer = self._recv(rid)
        if "error" in answer:
            return Outcome(error=answer["error"])
        return Outcome(text="".join(c.get("text", "") for c in answer["result"]["content"]))

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


class HttpFront:
    """A real ``symbi serve``, called with the SDK client and an API key."""

    def __init__(self, base: str, key: str) -> None:
        self.mcp = base + "/mcp"
        self.key = key

    async def call(self, tool: str, arguments: dict[str, Any]) -> Outcome:
        async with (
            httpx2.AsyncClient(headers={"X-API-Key": self.key}, timeout=60) as hc,
            streamable_http_client(self.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as s,
        ):
            await s.initialize()
            try:
                res = await s.call_tool(tool, arguments)
            except MCPError as e:
                return Outcome(error={"code": e.error.code, "message": e.error.message})
            return Outcome(text="".join(getattr(c, "text", "") for c in res.content))


@dataclass
class Outcome:
    text: str | None = None
    error: dict[str, Any] | None = None


@dataclass
class Front:
    name: str
    config: Path
    client: StdioFront | HttpFront
    log: Path


@pytest.fixture(scope="module", params=["stdio", "http"])
def front(
    request: pytest.FixtureRequest, http_peer: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp(f"text-{request.param}")
    cfg = _config(folder, http_peer)
    if request.param == "stdio":
        client = StdioFront(cfg)
        try:
            assert {"mut__t", "probe__t"} <= set(client.tools)
            yield Front("stdio", cfg, client, client.log)
        finally:
            client.close()
        return
    key, _ = ApiKeyStore(load_config(cfg, {}).api_keys_path).create("tester", ("tester",))
    with serve_process(cfg) as (base, _proc):
        [log] = folder.glob("serve-*.log")
        yield Front("http", cfg, HttpFront(base, key), log)


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("where", "pointer"), [("result", "/result/content/0/text"), ("error", "/error/message")]
)
@pytest.mark.anyio
async def test_an_http_upstream_answer_that_is_not_utf8_fails_the_call_naming_where(
    front: Front, where: str, pointer: str, sse: bool
) -> None:
    out = await front.client.call("mut__t", {"where": where, "sse": sse})
    assert out.error is not None and out.error["code"] == INTERNAL_ERROR, out
    assert pointer in out.error["message"]
    assert (await front.client.call("mut__ok", {"message": "next"})).text == "next"
    audit_verifies(front.config)


@pytest.mark.parametrize("upstream", ["mut", "probe"])
@pytest.mark.parametrize("where", sorted(NOTIFICATIONS))
@pytest.mark.anyio
async def test_a_notification_that_is_not_utf8_is_dropped_with_a_log_line(
    front: Front, upstream: str, where: str
) -> None:
    out = await front.client.call(f"{upstream}__t", {"where": where, "message": "hi"})
    assert out.text == "hi", out
    logged = front.log.read_text(errors="replace")
    assert f"upstream {upstream}: " in logged and NOTIFICATIONS[where] in logged
    audit_verifies(front.config)


@pytest.mark.parametrize("upstream", ["mut", "probe"])
@pytest.mark.parametrize("where", sorted(REQUESTS))
@pytest.mark.anyio
async def test_an_upstream_request_that_is_not_utf8_is_answered_at_once(
    front: Front, upstream: str, where: str
) -> None:
    out = await front.client.call(f"{upstream}__t", {"where": where})
    assert out.text is not None, out
    got = json.loads(out.text)  # what the peer received in answer to its request
    assert "none" not in got, f"the upstream's {where} request got no answer"
    assert got["error"]["code"] == INVALID_PARAMS and REQUESTS[where] in got["error"]["message"]
    assert (await front.client.call(f"{upstream}__ok", {"message": "next"})).text == "next"
    query = symbi_audit(front.config, "query", "--type", "upstream.client_request", "--json")
    assert query.returncode == 0, query.stderr
    refused = [json.loads(line)["details"] for line in query.stdout.splitlines() if line.strip()]
    assert any(d["upstream"] == upstream and REQUESTS[where] in (d.get("reason") or "") for d in refused)
    audit_verifies(front.config)


@pytest.mark.parametrize("what", ["sampling", "notification"])
@pytest.mark.anyio
async def test_what_an_http_upstreams_get_stream_carries_is_answered_or_dropped(
    tmp_path: Path, what: str
) -> None:
    """The same, outside any call: on the session's GET stream (server-initiated messages). The
    SDK handed the parse failure to the session as an exception (logged at debug): the request
    was never answered, the notification left no line. Now the request gets its error at once
    (POSTed back) and the notification a warning naming where."""
    with _http_peer(SURROGATE_GET=what) as url:
        cfg = write_config(tmp_path, f'[servers.mut]\nurl = "{url}"\nverification = "warn"\n')
        client = StdioFront(cfg)
        try:
            if what == "sampling":
                out = await client.call("mut__t", {"where": "answered"})
                assert out.text is not None, out
                got = json.loads(out.text)
                assert "none" not in got, "the upstream's request on its GET stream got no answer"
                assert got["error"]["code"] == INVALID_PARAMS and REQUESTS[what] in got["error"]["message"]
            else:
                assert (await client.call("mut__ok", {"message": "m"})).text == "m"
                deadline = time.monotonic() + 30  # the bound of the wait, not a timing assertion
                while NOTIFICATIONS[what] not in client.log.read_text(errors="replace"):
                    assert time.monotonic() < deadline, "no log line for the dropped notification"
                    await anyio.sleep(0.2)
        finally:
            client.close()
    audit_verifies(cfg)
