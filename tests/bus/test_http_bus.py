"""Two agents in separate HTTP sessions with different API keys exchange direct,
request/response and pub/sub messages through the MCP tools (the SDK client, real HTTP on
127.0.0.1); pushes on resources/subscribe; policy denials audited; a full buffer errors the
sender and loses nothing accepted; no body in the audit database or the logs. Then the same
across two ``symbi serve`` processes sharing one real redis-server."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

import gateway.context
from gateway.config import load_config
from gateway.server.auth import ApiKeyStore
from tests.bus.conftest import RedisServer
from tests.conftest import POLICY, SYMBI, TEST_POLICY_DATA, free_port, symbi_env, write_config
from tests.server._http import serve
from tests.server.http.conftest import run_server

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    # every MCP session becomes an agent with the runtime's agent identity (issue 13)
    pytest.mark.skipif(
        not hasattr(gateway.context, "AgentInfo"),
        reason="needs the runtime's agent identity (gateway/runtime, issue 13)",
    ),
]

SECRET = "bus-body-that-must-never-reach-the-audit-log-or-logs"


def bus_config(tmp_path: Path, extra: str = "") -> Path:
    doc = json.loads(TEST_POLICY_DATA.read_text())
    doc["symbi_data"]["principals"]["keys"]["outsider"] = {"roles": ["tester"]}  # an API key principal
    data = tmp_path / "policy-data.json"
    data.write_text(json.dumps(doc))
    return write_config(
        tmp_path,
        f"""
        [gateway]
        data_dir = "{tmp_path / "data"}"
        log_format = "json"
        [policy]
        path = "{POLICY}"
        data = "{data}"
        [sandbox]
        code_tools = false
        {extra}
        """,
    )


def make_keys(cfg: Path) -> dict[str, str]:
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    return {
        "a": store.create("tester", ("tester",))[0],
        "b": store.create("tester", ("tester",))[0],  # same principal, another key (another agent)
        "out": store.create("outsider", ("tester",))[0],
    }


class Agent:
    def __init__(self, session: ClientSession, updates: list[str]) -> None:
        self.s = session
        self.updates = updates
        self.id = ""

    async def tool(self, name: str, **args: Any) -> Any:
        r = await self.s.call_tool(f"bus__{name}", args)
        return r

    async def ok(self, name: str, **args: Any) -> Any:
        r = await self.tool(name, **args)
        assert not r.is_error, r
        return r.structured_content


@contextlib.asynccontextmanager
async def agent(url: str, key: str) -> AsyncIterator[Agent]:
    updates: list[str] = []

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, types.ResourceUpdatedNotification):
            updates.append(str(root.params.uri))

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as hc,
        streamable_http_client(url, http_client=hc) as (r, w),
        ClientSession(r, w, message_handler=on_message) as s,
    ):
        await s.initialize()
        a = Agent(s, updates)
        inbox = await s.read_resource("bus://inbox")
        a.id = json.loads(inbox.contents[0].text)["agent"]  # type: ignore[union-attr]
        yield a


async def exchange(a: Agent, b: Agent) -> None:
    """Direct, request/response and pub/sub between two connected agents."""
    sent = await a.ok("send", to=b.id, body={"text": SECRET})
    got = (await b.ok("receive", wait_ms=5000))["messages"]
    assert [(m["id"], m["from"], m["body"]) for m in got] == [(sent["id"], a.id, {"text": SECRET})]

    async def responder() -> None:
        (req,) = (await b.ok("receive", wait_ms=10000))["messages"]
        assert req["kind"] == "request"
        await b.ok("reply", request_id=req["id"], body={"answer": req["body"]["q"] * 2})

    async with anyio.create_task_group() as tg:
        tg.start_soon(responder)
        out = await a.ok("request", to=b.id, body={"q": 21}, timeout_ms=15000)
    assert out["reply"]["body"] == {"answer": 42} and out["reply"]["from"] == b.id

    await b.ok("subscribe", topic="team.*")
    pub = await a.ok("publish", topic="team.release", body={"v": SECRET})
    assert pub["delivered_to"] == 1
    (m,) = (await b.ok("receive", wait_ms=5000))["messages"]
    assert (m["topic"], m["body"], m["from"]) == ("team.release", {"v": SECRET}, a.id)


def serve_logs(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.glob("serve-*.log"))


def audit_bytes(data: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(data.glob("audit*.db*")))


async def test_two_http_sessions_exchange_messages(tmp_path: Path) -> None:
    cfg = bus_config(tmp_path, "[runtime]\nmessage_buffer_size = 3\n")
    keys = make_keys(cfg)
    with run_server(cfg) as srv:
        async with agent(srv.mcp, keys["a"]) as a, agent(srv.mcp, keys["b"]) as b:
            assert a.id and b.id and a.id != b.id
            await exchange(a, b)

            # pushed: resources/subscribe on bus://inbox, then a message arrives
            await b.s.subscribe_resource("bus://inbox")
            await a.ok("send", to=b.id, body="ping")
            with anyio.fail_after(10):
                while "bus://inbox" not in b.updates:
                    await anyio.sleep(0.05)
            assert [m["body"] for m in (await b.ok("receive"))["messages"]] == ["ping"]

            # a full buffer errors the sender and loses nothing accepted
            for i in range(3):
                await a.ok("send", to=b.id, body=i)
            over = await a.tool("send", to=b.id, body="one too many")
            assert over.is_error and over.meta["symbi/error"]["code"] == "bus_buffer_full"
            assert [m["body"] for m in (await b.ok("receive", max=10))["messages"]] == [0, 1, 2]

            # a denied topic and another principal's agent: refused, audited
            denied = await a.tool("publish", topic="secret.plans", body=SECRET)
            assert denied.is_error and denied.meta["symbi/error"]["code"] == "policy_denied"
            async with agent(srv.mcp, keys["out"]) as out:
                refused = await out.tool("send", to=b.id, body=SECRET)
                assert refused.is_error and refused.meta["symbi/error"]["code"] == "policy_denied"
            assert (await b.ok("receive"))["messages"] == []
        srv.state.gateway.audit.flush(timeout=10)  # type: ignore[union-attr]

    data = tmp_path / "data"
    assert SECRET.encode() not in audit_bytes(data)
    assert SECRET.encode() not in (data / "bus.db").read_bytes()
    db = sqlite3.connect(data / "audit.db")
    rows = [
        (t, json.loads(d)) for t, d in db.execute("SELECT type, details FROM events WHERE type LIKE 'bus.%'")
    ]
    kinds = {t for t, _ in rows}
    assert {"bus.send", "bus.publish", "bus.denied", "bus.delivery_failed", "bus.subscribe"} <= kinds
    denied_kinds = sorted(d["kind"] for t, d in rows if t == "bus.denied")
    assert denied_kinds == ["bus/publish", "bus/send"]


@pytest.fixture
def shared_redis(redis_server: RedisServer) -> RedisServer:
    return redis_server


async def test_two_gateway_processes_on_one_redis(tmp_path: Path, shared_redis: RedisServer) -> None:
    cfg = bus_config(tmp_path, f'[bus]\nbackend = "redis"\nurl = "{shared_redis.url}"\n')
    keys = make_keys(cfg)
    with serve(cfg) as one, serve(cfg) as two:
        async with agent(one + "/mcp", keys["a"]) as a, agent(two + "/mcp", keys["b"]) as b:
            await exchange(a, b)
            await exchange(b, a)
    data = tmp_path / "data"
    assert SECRET.encode() not in audit_bytes(data)
    logs = serve_logs(tmp_path)
    assert logs and SECRET.encode() not in logs


def test_kill_9_of_the_gateway_loses_no_accepted_message(tmp_path: Path) -> None:
    cfg = bus_config(tmp_path)
    keys = make_keys(cfg)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve-kill.log", "w") as log:
        proc = subprocess.Popen(
            [str(SYMBI), "serve", "--config", str(cfg), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=symbi_env(),
        )
        try:
            deadline = time.monotonic() + 60
            while not _ready(base):
                assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
                time.sleep(0.1)

            async def send_then_kill() -> tuple[str, list[str]]:
                async with agent(base + "/mcp", keys["a"]) as a, agent(base + "/mcp", keys["b"]) as b:
                    accepted = [
                        (await a.ok("send", to=b.id, body={"n": i, "secret": SECRET}))["id"]
                        for i in range(30)
                    ]
                    proc.send_signal(signal.SIGKILL)  # while both sessions are open
                    return b.id, accepted

            with contextlib.suppress(BaseExceptionGroup):  # the sessions' transports break: expected
                result: list[tuple[str, list[str]]] = []

                async def run() -> None:
                    result.append(await send_then_kill())

                anyio.run(run)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    b_id, accepted = result[0]
    assert len(accepted) == 30
    tail = subprocess.run(
        [str(SYMBI), "bus", "tail", "--json", "-n", "1000", "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    stored = [json.loads(x) for x in tail.stdout.splitlines()]
    pending = [r["id"] for r in stored if r["inbox"] == b_id and r["state"] == "pending"]
    assert pending == accepted  # all there, in order, none delivered twice or lost
    verify = subprocess.run(
        [str(SYMBI), "bus", "verify", "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=symbi_env(),
    )
    assert verify.returncode == 0, verify.stdout


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def test_agents_get_keys_at_registration_and_are_addressed_by_name(tmp_path: Path) -> None:
    cfg = bus_config(tmp_path)
    keys = make_keys(cfg)
    with run_server(cfg) as srv:
        gw = srv.state.gateway
        assert gw is not None
        async with (
            agent(srv.mcp, keys["a"]) as a,
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {keys['b']}"}, timeout=60) as hc,
            streamable_http_client(srv.mcp, http_client=hc) as (r, w),
            ClientSession(r, w) as quiet,
        ):
            await quiet.initialize()
            await quiet.list_tools()  # registers the session's agent; no bus call at all
            (c,) = [x for x in gw.agents if x.id != a.id and x.principal == "tester"]
            # the runtime's registration made its keys: it can be written to, by name
            sent = await a.ok("send", to=c.name, body="to a name")
            r2 = await quiet.call_tool("bus__receive", {})
            assert not r2.is_error, r2
            got = r2.structured_content["messages"]
            assert [(m["id"], m["body"]) for m in got] == [(sent["id"], "to a name")]
            assert sent["to"] == c.id


async def test_the_bus_resources_one_agent_watches_are_bounded(tmp_path: Path) -> None:
    """Attack (session 36): ``resources/subscribe`` on ``bus://topics/NAME`` kept an entry per
    distinct NAME for the connection, without bound (any NAME a subscription pattern allows):
    one session grew the gateway's memory by an entry a request. Now at most the inbox and
    ``bus.max_subscriptions_per_agent`` topics per agent; an unsubscribed one makes room."""
    cfg = bus_config(tmp_path, "[bus]\nmax_subscriptions_per_agent = 3\n")
    keys = make_keys(cfg)
    with run_server(cfg) as srv:
        async with agent(srv.mcp, keys["a"]) as a:
            await a.s.subscribe_resource("bus://inbox")
            for n in range(3):
                await a.s.subscribe_resource(f"bus://topics/team.t{n}")
            await a.s.subscribe_resource("bus://topics/team.t0")  # watched already: no new entry
            with pytest.raises(MCPError):
                await a.s.subscribe_resource("bus://topics/team.t3")
            await a.s.unsubscribe_resource("bus://topics/team.t0")
            await a.s.subscribe_resource("bus://topics/team.t3")
            bus = srv.state.gateway.builtins["bus"]  # type: ignore[union-attr]
            assert bus.footprint()["bus_watched_uris"] == 4  # type: ignore[union-attr]
