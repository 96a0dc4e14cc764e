"""The ``bus`` built-in inside a real gateway (the whole chain: audit, verification, arguments,
policy with the bus kinds), called the way the MCP front calls it, with agent principals.

The agent id is set on the ``Principal`` here the way the HTTP front sets it for a session
(see test_http_bus.py for the same through real HTTP sessions)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.assemble import make_gateway
from gateway.boundary import error_result
from gateway.config.load import load_config
from gateway.context import CallContext, Principal
from gateway.errors import BusNoAgent, PolicyDenied, UnknownTool
from tests.conftest import write_config

pytestmark = pytest.mark.anyio

A = Principal(id="tester", roles=("tester",), agent="ag-a")
B = Principal(id="tester", roles=("tester",), agent="ag-b")
OTHER = Principal(id="limited", agent="ag-x")
SECRET = "body-text-that-must-never-be-in-the-audit-db"


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n[bus]\nexpire_interval_s = 0.2\n")
    gateway = make_gateway(load_config(cfg))
    async with gateway.running():
        yield gateway


async def call(gw: Gateway, who: Principal, tool: str, **args: Any) -> Any:
    """What the MCP front does with a tools/call: the chain, errors turned into results by the boundary."""
    try:
        return await gw.call(
            CallContext(principal=who, kind="tools/call", target=f"bus__{tool}", arguments=args)
        )
    except Exception as e:  # noqa: BLE001 - the boundary
        return error_result(e)


def data(result: Any) -> Any:
    assert not result.is_error, result
    # a client that reads the text content gets the same answer as one that reads structured content
    (text,) = result.content
    assert text.type == "text" and json.loads(text.text) == result.structured_content
    return result.structured_content


async def test_tools_are_listed_and_verified(gw: Gateway) -> None:
    names = {e.info.name for e in await gw.visible_tools(A)}
    assert {
        "bus__send",
        "bus__request",
        "bus__reply",
        "bus__publish",
        "bus__subscribe",
        "bus__unsubscribe",
        "bus__receive",
    } <= names
    assert not gw.catalog.tools["bus__send"].info.code_tool
    assert gw.catalog.resource_owner("bus://inbox") == "bus"
    assert gw.catalog.resource_owner("bus://topics/team.x") == "bus"


async def test_direct_message_and_audit_without_body(gw: Gateway, tmp_path: Path) -> None:
    await call(gw, B, "receive")  # B registers (gets keys) on first use
    sent = data(await call(gw, A, "send", to="ag-b", body={"text": SECRET}))
    got = data(await call(gw, B, "receive", max=10))["messages"]
    assert [(m["id"], m["from"], m["body"]) for m in got] == [(sent["id"], "ag-a", {"text": SECRET})]
    assert gw.audit is not None
    gw.audit.flush(timeout=5)
    for f in (tmp_path / "data").glob("audit*.db*"):
        assert SECRET.encode() not in f.read_bytes()
    db = sqlite3.connect(tmp_path / "data" / "audit.db")
    types = [r[0] for r in db.execute("SELECT type FROM events")]
    assert "bus.send" in types and "tool.call" in types
    details = [json.loads(r[0]) for r in db.execute("SELECT details FROM events WHERE type='tool.call'")]
    assert any(d["tool"] == "bus__send" and d["arguments"]["body"] == "[not recorded]" for d in details)
    # only the body is held back: who was messaged stays in the log (the policy's redaction)
    (send,) = [d for d in details if d["tool"] == "bus__send"]
    assert send["arguments"] == {"to": "ag-b", "body": "[not recorded]"}


async def test_no_agent_is_refused(gw: Gateway) -> None:
    r = await call(gw, Principal(id="tester", roles=("tester",)), "send", to="ag-b", body=1)
    assert r.is_error and r.meta["symbi/error"]["code"] == BusNoAgent.code


async def test_other_principal_and_denied_topic_refused_and_audited(gw: Gateway) -> None:
    await call(gw, B, "receive")
    await call(gw, A, "receive")
    # 'limited' may call only everything__echo: the tool is hidden, so it answers like a missing one
    r = await call(gw, OTHER, "send", to="ag-b", body=1)
    assert r.is_error and r.meta["symbi/error"]["code"] == UnknownTool.code
    r = await call(gw, A, "publish", topic="secret.plans", body=SECRET)
    assert r.is_error and r.meta["symbi/error"]["code"] == PolicyDenied.code
    r = await call(gw, B, "subscribe", topic="*")
    assert r.is_error and r.meta["symbi/error"]["code"] == PolicyDenied.code
    assert gw.audit is not None
    gw.audit.flush(timeout=5)
    denied = [e for e in gw.audit.recent(100) if e["type"] == "bus.denied"]
    assert {d["details"]["kind"] for d in denied} == {"bus/publish", "bus/subscribe"}


async def test_pubsub_and_request_reply(gw: Gateway) -> None:
    import anyio

    await call(gw, A, "receive")
    data(await call(gw, B, "subscribe", topic="team.*"))
    pub = data(await call(gw, A, "publish", topic="team.news", body="hello"))
    assert pub["delivered_to"] == 1
    (m,) = data(await call(gw, B, "receive"))["messages"]
    assert (m["topic"], m["body"], m["kind"]) == ("team.news", "hello", "topic")

    async def responder() -> None:
        (req,) = data(await call(gw, B, "receive", wait_ms=5000))["messages"]
        data(await call(gw, B, "reply", request_id=req["id"], body={"pong": req["body"]}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(responder)
        out = data(await call(gw, A, "request", to="ag-b", body="ping", timeout_ms=5000))
    assert out["reply"]["body"] == {"pong": "ping"}
    r = await call(gw, A, "request", to="ag-b", body="ping", timeout_ms=200)
    assert r.is_error and r.meta["symbi/error"]["code"] == "bus_timeout"


async def test_per_agent_message_rate_from_the_policy(tmp_path: Path) -> None:
    from tests.conftest import POLICY, TEST_POLICY_DATA

    doc = json.loads(TEST_POLICY_DATA.read_text())
    doc["symbi_data"]["principals"]["stdio"]["tester"]["bus_rate_limit"] = 2
    data_file = tmp_path / "policy-data.json"
    data_file.write_text(json.dumps(doc))
    cfg = write_config(
        tmp_path, f'[policy]\npath = "{POLICY}"\ndata = "{data_file}"\n[sandbox]\ncode_tools = false\n'
    )
    gateway = make_gateway(load_config(cfg))
    async with gateway.running():
        await call(gateway, B, "receive")
        for i in range(2):
            data(await call(gateway, A, "send", to="ag-b", body=i))
        r = await call(gateway, A, "send", to="ag-b", body="over the rate")
        assert r.is_error and r.meta["symbi/error"]["code"] == "rate_limited"
        # per agent: B still may send
        data(await call(gateway, B, "send", to="ag-a", body="from b"))
        assert gateway.audit is not None
        gateway.audit.flush(timeout=5)
        denied = [e["details"] for e in gateway.audit.recent(100) if e["type"] == "bus.denied"]
        assert [d["kind"] for d in denied] == ["bus/send"]


async def test_tampered_store_is_rejected_and_audited(gw: Gateway, tmp_path: Path) -> None:
    await call(gw, B, "receive")
    data(await call(gw, A, "send", to="ag-b", body="original"))
    db = sqlite3.connect(tmp_path / "data" / "bus.db")
    with db:  # an attacker with write access to the data dir flips one ciphertext bit
        seq, c = db.execute("SELECT seq, c FROM messages WHERE inbox='ag-b' AND state=0").fetchone()
        db.execute("UPDATE messages SET c=? WHERE seq=?", (bytes([c[0] ^ 1]) + c[1:], seq))
    db.close()
    assert data(await call(gw, B, "receive"))["messages"] == []
    assert gw.audit is not None
    gw.audit.flush(timeout=5)
    rejected = [e["details"] for e in gw.audit.recent(100) if e["type"] == "bus.rejected"]
    assert [(d["inbox"], d["reason"]) for d in rejected] == [("ag-b", "bad signature")]


async def test_an_agents_subscriptions_are_bounded(tmp_path: Path) -> None:
    """Attack (session 36): an agent could hold any number of subscriptions (each distinct
    topic under a granted glob is one: ``team.1``, ``team.2``...), and every publish and every
    receipt of a topic message, by any principal, reads and matches all of them (a regular
    expression compiled per pattern past the cache's 4,096): one agent's without end slowed
    every other's. Now at most ``bus.max_subscriptions_per_agent``."""
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n[bus]\nmax_subscriptions_per_agent = 5\n")
    async with make_gateway(load_config(cfg)).running() as gw:
        for n in range(5):
            data(await call(gw, A, "subscribe", topic=f"team.t{n}"))
        data(await call(gw, A, "subscribe", topic="team.t0"))  # one held already: no new one
        r = await call(gw, A, "subscribe", topic="team.t5")
        assert r.is_error and r.meta["symbi/error"]["code"] == "bus_quota_exceeded"
        data(await call(gw, B, "subscribe", topic="team.t5"))  # another agent has its own
        assert data(await call(gw, A, "unsubscribe", topic="team.t1"))["unsubscribed"] is True
        data(await call(gw, A, "subscribe", topic="team.t5"))  # room again
        assert len((await gw.builtins["bus"].bus.backend.subscriptions())["ag-a"]) == 5  # type: ignore[attr-defined]
    db = sqlite3.connect(tmp_path / "data" / "audit.db")
    rows = db.execute("SELECT details FROM events WHERE type = 'bus.denied'").fetchall()
    assert [json.loads(d)["topic"] for (d,) in rows] == ["team.t5"]


async def test_a_principal_cannot_fill_the_data_dir_through_the_bus(tmp_path: Path) -> None:
    """Attack (session 36): the buffers bound what waits unread in one inbox, not what is
    stored: the embedded store keeps a settled message for bus.max_age_s (for `symbi bus
    verify`), so a principal sending 256 KB bodies to its own agent and receiving them filled
    the data dir, where the audit log lives, at its rate limit (15 MB a minute at the default
    60 calls), and a day's worth stays. Now at most bus.max_bytes_per_principal within the window."""
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n[bus]\nmax_bytes_per_principal = 20000\n")
    carol = Principal(id="carol", roles=("tester",), agent="ag-c")
    async with make_gateway(load_config(cfg)).running() as gw:
        await call(gw, B, "receive")
        sent = 0
        for _ in range(10):
            r = await call(gw, A, "send", to="ag-b", body="x" * 4000)
            if r.is_error:
                assert r.meta["symbi/error"]["code"] == "bus_quota_exceeded"
                break
            sent += 1
            assert len(data(await call(gw, B, "receive", max=10))["messages"]) == 1  # settled, still stored
        assert 0 < sent < 5
        data(await call(gw, B, "subscribe", topic="team.*"))
        r = await call(gw, A, "publish", topic="team.x", body="y" * 8000)
        assert r.is_error and r.meta["symbi/error"]["code"] == "bus_quota_exceeded"
        await call(gw, Principal(id="carol", roles=("tester",), agent="ag-d"), "receive")
        data(await call(gw, carol, "send", to="ag-d", body="carol has her own budget"))
    stored = sqlite3.connect(tmp_path / "data" / "bus.db").execute("SELECT sum(length(c)) FROM messages")
    assert stored.fetchone()[0] <= 20000 + 100


async def test_topic_copies_count_against_the_subscribers_budget_not_the_publishers(tmp_path: Path) -> None:
    """A subscriber with many agents makes many stored copies of one publication: those count
    against its own principal (its deliveries are refused past it), the publisher pays once."""
    cfg = write_config(tmp_path, "[sandbox]\ncode_tools = false\n[bus]\nmax_bytes_per_principal = 20000\n")
    dave = Principal(id="dave", roles=("tester",), agent="ag-dave")
    carols = [Principal(id="carol", roles=("tester",), agent=f"ag-c{n}") for n in range(3)]
    async with make_gateway(load_config(cfg)).running() as gw:
        for c in carols:
            data(await call(gw, c, "subscribe", topic="team.*"))
        refused = [
            data(await call(gw, dave, "publish", topic="team.x", body="z" * 2000))["refused"]
            for _ in range(4)
        ]
    assert refused[:3] == [[], [], []]
    assert refused[3]  # carol's budget (3 copies a publication) ran out, dave's (one each) did not


async def _drain(gw: Gateway, who: Principal, cap: int) -> list[Any]:
    """Receive until the inbox is empty: every result within the policy's cap, never cut."""
    from gateway.policy.results import TRUNCATION_MARK, result_size

    got: list[Any] = []
    for _ in range(20):
        r = await call(gw, who, "receive", max=100)
        mark = TRUNCATION_MARK.format(cap=cap).strip()
        assert result_size(r) <= cap and not any(mark in c.text for c in r.content)
        batch = data(r)["messages"]
        if not batch:
            return got
        got += [m["body"] for m in batch]
    raise AssertionError("the inbox never emptied")


async def test_a_peers_large_messages_cannot_hide_the_ones_behind_them(gw: Gateway) -> None:
    """Attack (session 40): ``bus__receive`` settled a batch as delivered, then the policy's
    ``max_result_bytes`` (1 MB here) cut the result: the messages past the cap were lost, marked
    delivered and never read. A peer allowed to message the victim sent four 250 KB bodies
    ahead of a colleague's message, and the colleague's message was gone. Now a receive takes
    only what fits its result; the rest waits for the next one."""
    cap = 1_048_576  # tests/assets/policy/test-data.json: max_result_bytes "*"
    colleague = Principal(id="tester", roles=("tester",), agent="ag-c")
    await call(gw, B, "receive")
    for _ in range(4):
        data(await call(gw, A, "send", to="ag-b", body="x" * 250_000))
    data(await call(gw, colleague, "send", to="ag-b", body="the deploy is at noon"))
    got = await _drain(gw, B, cap)
    assert got == ["x" * 250_000] * 4 + ["the deploy is at noon"]


async def test_a_message_too_large_for_this_receives_cap_hides_only_itself(gw: Gateway) -> None:
    """A body of emoji is escaped twice in the result's text (``\\ud83d\\ude00``) and kept in
    its structured content: 240 KB on the bus are more than the 1 MB cap alone. It was taken
    alone and cut by the cap (marked delivered, never read whole); then (bus41) rejected, lost
    to a receiver whom another receive could give it whole. Now it waits, and what follows it
    is received whole, in the same receive."""
    colleague = Principal(id="tester", roles=("tester",), agent="ag-c")
    await call(gw, B, "receive")
    data(await call(gw, A, "send", to="ag-b", body="\U0001f600" * 60_000))
    data(await call(gw, colleague, "send", to="ag-b", body="still here"))
    assert await _drain(gw, B, 1_048_576) == ["still here"]
    bus = gw.builtins["bus"].bus  # type: ignore[attr-defined]
    assert bus.rejected == {}
    assert [r.body for r in await bus.receive(B)] == ["\U0001f600" * 60_000]  # no cap: taken whole
