"""Agent bus benchmark: messages/s and delivery latency, plain and secure, embedded and Redis,
against the crypto floor and a plain tools/call measured in the same run.

Run: ``/work/main/.venv/bin/python bench/bus.py [--messages 5000] [--latency 500]``; prints
one JSON document. Starts its own redis-server on 127.0.0.1 (random port, temp folder).

* ``crypto_floor``: per message, Ed25519 sign + verify and AES-256-GCM seal + open of the
  same body (keys derived once per pair, as the bus caches them): the least a signed and
  encrypted message can cost on this core.
* ``inprocess_queue``: an asyncio queue handing message objects over (no store, no crypto):
  what an in-process bus with no durability and no security costs.
* ``plain_<backend>``: the backend alone (durable enqueue, fetch, settle) with pre-sealed
  messages: the bus's storage path without crypto.
* ``secure_<backend>``: ``Bus.send`` + ``Bus.receive``: policy hook off, crypto, storage,
  every receive check (signature, recipient, timestamps, replay window) then decrypt.
* ``mcp_chain_in_process``: ``bus__send`` + ``bus__receive`` through the gateway's call chain
  (audit, verification, arguments, policy) vs ``everything__echo`` through the same chain;
* ``mcp_http``: the same over real MCP (``symbi serve``, two HTTP sessions = two agents, the
  SDK client) vs ``everything__echo`` on the same server.

Throughput: N sends, then receives in batches of 1000. Latency: one message at a time, from
the start of ``send`` to ``receive`` returning it in a receiver already waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# the repo root instead of bench/ (whose modules, e.g. bench/http.py, would shadow the stdlib)
sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench._common import everything_toml, free_port, latency_summary
from gateway.bus.backend import BusBackend
from gateway.bus.core import Bus
from gateway.bus.crypto import AgentKeys, KeyRing, load_secret
from gateway.bus.embedded import EmbeddedBackend
from gateway.bus.redis_backend import RedisBackend
from gateway.context import Principal

if TYPE_CHECKING:  # the SDK client is imported only by the MCP parts that use it
    from mcp import ClientSession

ROOT = Path(__file__).resolve().parents[1]
BODY = {"task": "resize", "image": "s3://bucket/object-0001.png", "width": 640, "height": 480}
A = Principal(id="bench", agent="agent-a")
B = Principal(id="bench", agent="agent-b")


class NullSink:
    def emit(
        self, event_type: str, details: Any, *, principal: str | None = None, agent: str | None = None
    ) -> None:
        pass


def crypto_floor(n: int) -> dict[str, float]:
    a, b = AgentKeys.generate("agent-a", "bench"), AgentKeys.generate("agent-b", "bench")
    ring = KeyRing(os.urandom(32), None)
    cipher = ring.pair_cipher(a, "agent-b", b.dh.public_key())
    peer_cipher = ring.pair_cipher(b, "agent-a", a.dh.public_key())
    pub = a.sign.public_key()
    body = json.dumps(BODY).encode()
    header = b'[1,"0195-...","agent-a","agent-b",null,"direct",1,2,null,null]'
    start = time.perf_counter()
    for _ in range(n):
        nonce = os.urandom(12)
        ct = cipher.encrypt(nonce, body, header)
        sig = a.sign.sign(header + nonce + ct)
        pub.verify(sig, header + nonce + ct)
        peer_cipher.decrypt(nonce, ct, header)
    per = (time.perf_counter() - start) / n
    return {"us_per_message": round(per * 1e6, 2), "messages_per_s": round(1 / per, 1)}


async def inprocess_queue(n: int) -> dict[str, Any]:
    q: asyncio.Queue[Any] = asyncio.Queue()
    start = time.perf_counter()
    for i in range(n):
        q.put_nowait((i, BODY))
    while not q.empty():
        q.get_nowait()
    wall = time.perf_counter() - start
    lat: list[float] = []
    for i in range(min(n, 2000)):
        t = time.perf_counter()
        waiter = asyncio.ensure_future(q.get())
        q.put_nowait((i, BODY))
        await waiter
        lat.append(time.perf_counter() - t)
    return {"messages_per_s": round(n / wall, 1), **latency_summary(lat)}


async def _bus(backend: BusBackend, folder: Path) -> Bus:
    await backend.start()
    bus = Bus(
        backend,
        KeyRing(load_secret(folder / "bus-secret"), folder / "bus-keys.db"),
        events=NullSink(),
        buffer_size=10_000_000,
    )
    await bus.register("agent-a", "bench")
    await bus.register("agent-b", "bench")
    return bus


async def plain(bus: Bus, n: int, lat_n: int) -> dict[str, Any]:
    """The backend alone: messages sealed beforehand, then enqueue / fetch / settle."""
    me = bus.ring.local("agent-a")
    assert me is not None
    body = json.dumps(BODY).encode()
    msgs = [await bus.sealer.seal(me, "direct", body, to="agent-b") for _ in range(n + lat_n)]
    be = bus.backend
    start = time.perf_counter()
    for m in msgs[:n]:
        await be.enqueue("agent-b", m, 10_000_000)
    got = 0
    while got < n:
        batch = await be.fetch("agent-b", 1000, 0)
        await be.settle("agent-b", [(p.ref, "delivered") for p in batch])
        got += len(batch)
    wall = time.perf_counter() - start

    async def one(i: int) -> None:
        await be.enqueue("agent-b", msgs[n + i], 10_000_000)

    async def take() -> None:
        batch = await be.fetch("agent-b", 1, 5.0)
        await be.settle("agent-b", [(p.ref, "delivered") for p in batch])

    lat = await _latency(one, take, lat_n)
    return {"messages_per_s": round(n / wall, 1), **latency_summary(lat)}


async def secure(bus: Bus, n: int, lat_n: int) -> dict[str, Any]:
    start = time.perf_counter()
    for _ in range(n):
        await bus.send(A, "agent-b", BODY)
    got = 0
    while got < n:
        got += len(await bus.receive(B, max_items=1000))
    wall = time.perf_counter() - start

    async def one(i: int) -> None:
        await bus.send(A, "agent-b", BODY)

    async def take() -> None:
        await bus.receive(B, max_items=1, wait_s=5.0)

    lat = await _latency(one, take, lat_n)
    return {
        "messages_per_s": round(n / wall, 1),
        "us_per_message": round(wall / n * 1e6, 2),
        **latency_summary(lat),
    }


async def timeout_accuracy(
    bus: Bus, timeouts_ms: tuple[int, ...] = (100, 250, 500), rounds: int = 5
) -> dict[str, Any]:
    """bus.request to an agent that never answers: when does the timeout error come, as a
    fraction of the timeout asked for (goal: within +-10%)."""
    from gateway.errors import BusTimeout

    out: dict[str, Any] = {}
    for t in timeouts_ms:
        ratios = []
        for _ in range(rounds):
            start = time.perf_counter()
            try:
                await bus.request(A, "agent-b", BODY, timeout_s=t / 1000)
            except BusTimeout:
                ratios.append((time.perf_counter() - start) * 1000 / t)
        out[f"{t}ms"] = {"min_ratio": round(min(ratios), 3), "max_ratio": round(max(ratios), 3)}
    return out


async def _latency(
    send: Callable[[int], Awaitable[None]], take: Callable[[], Awaitable[None]], n: int
) -> list[float]:
    out: list[float] = []
    for i in range(n):
        receiver = asyncio.ensure_future(take())
        await asyncio.sleep(0)  # the receiver is waiting
        t = time.perf_counter()
        await send(i)
        await receiver
        out.append(time.perf_counter() - t)
    return out


def _redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def _vs_echo(echo: list[float], bus_lat: list[float]) -> dict[str, Any]:
    """Both latencies, and a bus round's p50 over the echo's (a round is two tool calls)."""
    e, s = latency_summary(echo), latency_summary(bus_lat)
    return {
        "echo_tools_call": e,
        "bus_send_plus_receive": s,
        "ratio_p50_vs_echo": round(s["p50_ms"] / e["p50_ms"], 2),
        "ratio_p50_per_tool_call_vs_echo": round(s["p50_ms"] / 2 / e["p50_ms"], 2),
    }


async def mcp_ratio(folder: Path, n: int) -> dict[str, Any]:
    """bus__send + bus__receive vs everything__echo, both through the gateway's call chain."""
    from gateway.assemble import make_gateway
    from gateway.config.load import load_config
    from gateway.context import CallContext

    policy = ROOT / "policies.rego"
    data = ROOT / "tests/assets/policy/test-data.json"
    cfg = folder / "symbi.toml"
    cfg.write_text(
        f'[gateway]\ndata_dir = "{folder / "gw"}"\n[policy]\npath = "{policy}"\ndata = "{data}"\n'
        f"[sandbox]\ncode_tools = false\n{everything_toml('warn')}"
    )
    a = Principal(id="tester", roles=("tester",), agent="agent-a")
    b = Principal(id="tester", roles=("tester",), agent="agent-b")
    gw = make_gateway(load_config(cfg))
    audit = gw.audit
    if audit is None:  # on unless the config turns it off, and this one does not
        raise RuntimeError("the gateway has no audit log")
    async with gw.running():

        async def call(p: Principal, tool: str, args: dict[str, Any]) -> Any:
            r = await gw.call(CallContext(principal=p, kind="tools/call", target=tool, arguments=args))
            assert not r.is_error, r
            return r

        await call(b, "bus__receive", {})
        echo, bus_lat = [], []
        for round_ in range(3):
            for i in range(n):
                t = time.perf_counter()
                await call(a, "everything__echo", {"message": f"m{round_}-{i}"})
                echo.append(time.perf_counter() - t)
                t = time.perf_counter()
                await call(a, "bus__send", {"to": "agent-b", "body": BODY})
                await call(b, "bus__receive", {"max": 1})
                bus_lat.append(time.perf_counter() - t)
        audit.flush(timeout=30)
    return _vs_echo(echo, bus_lat)


def _serve(cfg: Path, folder: Path) -> tuple[subprocess.Popen[bytes], TextIO, str]:
    """``python -m gateway serve`` on a free port, once /readyz answers."""
    import httpx

    port = free_port()
    log = open(folder / "serve.log", "w")  # closed by the caller
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, log, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("symbi serve did not become ready")


def _serve_config(folder: Path) -> Path:
    """``mcp_http_ratio``'s server: the repo's policy, server-everything, no access log."""
    cfg = folder / "serve.toml"
    cfg.write_text(
        f'[gateway]\ndata_dir = "{folder / "serve"}"\nlog_level = "WARNING"\n[policy]\n'
        f'path = "{ROOT / "policies.rego"}"\ndata = "{ROOT / "tests/assets/policy/test-data.json"}"\n'
        f"[http]\naccess_log = false\n[sandbox]\ncode_tools = false\n{everything_toml('warn')}"
    )
    return cfg


@contextlib.asynccontextmanager
async def _http_session(base: str, key: str) -> AsyncIterator[ClientSession]:
    """An initialised SDK client session to ``base``'s /mcp with the API key ``key``."""
    import httpx2  # the SDK's HTTP client library (not httpx)
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(60)) as hc,
        streamable_http_client(base + "/mcp", http_client=hc) as (r, w),
        ClientSession(r, w) as s,
    ):
        await s.initialize()
        yield s


async def _echo_then_bus(a: ClientSession, b: ClientSession, n: int) -> tuple[list[float], list[float]]:
    """``n`` times: ``everything__echo`` (agent A), then ``bus__send`` (A to B) + ``bus__receive``
    (B), every reply checked: the echo's latencies and the bus rounds'."""
    from mcp.types import TextResourceContents

    inbox = (await b.read_resource("bus://inbox")).contents[0]
    assert isinstance(inbox, TextResourceContents), inbox  # the inbox is a JSON text
    b_id = json.loads(inbox.text)["agent"]
    echo, bus_lat = [], []
    for i in range(n):
        t = time.perf_counter()
        r = await a.call_tool("everything__echo", {"message": f"m{i}"})
        echo.append(time.perf_counter() - t)
        assert not r.is_error, r
        t = time.perf_counter()
        r1 = await a.call_tool("bus__send", {"to": b_id, "body": BODY})
        r2 = await b.call_tool("bus__receive", {"max": 1, "wait_ms": 5000})
        bus_lat.append(time.perf_counter() - t)
        assert not r1.is_error and not r2.is_error, (r1, r2)
        assert len(r2.structured_content["messages"]) == 1
    return echo, bus_lat


async def mcp_http_ratio(folder: Path, n: int) -> dict[str, Any]:
    """Over real MCP: one ``symbi serve``, two HTTP sessions (two agents, the SDK client).
    ``bus__send`` (agent A) + ``bus__receive`` (agent B) vs ``everything__echo`` (agent A)."""
    from gateway import context as gw_context
    from gateway.config.load import load_config
    from gateway.server.auth import ApiKeyStore

    if not hasattr(gw_context, "AgentInfo"):
        return {"skipped": "needs the runtime's agent identity (every session an agent)"}
    cfg = _serve_config(folder)
    store = ApiKeyStore(load_config(cfg, {}).api_keys_path)
    key_a, key_b = store.create("tester", ("tester",))[0], store.create("tester", ("tester",))[0]
    proc, log, base = await asyncio.to_thread(_serve, cfg, folder)
    try:
        async with _http_session(base, key_a) as a, _http_session(base, key_b) as b:
            echo, bus_lat = await _echo_then_bus(a, b, n)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    return _vs_echo(echo, bus_lat)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "messages": args.messages,
        "latency_samples": args.latency,
        "crypto_floor": crypto_floor(args.messages),
    }
    out["inprocess_queue"] = await inprocess_queue(args.messages * 10)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        proc, url = _redis(root)
        try:
            for name, make in (
                ("embedded", lambda f: EmbeddedBackend(f / "bus.db")),
                ("redis", lambda f: RedisBackend(url)),
            ):
                for mode, fn in (("plain", plain), ("secure", secure)):
                    folder = root / f"{name}-{mode}"
                    folder.mkdir()
                    if name == "redis":
                        await RedisBackend(url)._r.flushall()
                    bus = await _bus(make(folder), folder)
                    floor_before = crypto_floor(min(args.messages, 1000))["us_per_message"]
                    out[f"{mode}_{name}"] = await fn(bus, args.messages, args.latency)
                    # the floor right around this run: the load on a shared machine moves
                    floor_after = crypto_floor(min(args.messages, 1000))["us_per_message"]
                    out[f"{mode}_{name}"]["crypto_floor_us_same_time"] = round(
                        (floor_before + floor_after) / 2, 2
                    )
                    if mode == "secure":
                        out[f"secure_{name}"]["request_timeout"] = await timeout_accuracy(bus)
                    await bus.backend.close()
                    bus.ring.close()
        finally:
            proc.kill()
            proc.wait()
        if not args.no_mcp:
            out["mcp_chain_in_process"] = await mcp_ratio(root, args.mcp_calls)
            out["mcp_http"] = await mcp_http_ratio(root, args.mcp_calls)
    out["secure_vs_crypto_floor"] = {}
    for name in ("embedded", "redis"):
        sec, plain_ = out[f"secure_{name}"], out[f"plain_{name}"]
        floor = sec["crypto_floor_us_same_time"]
        # plain storage cost scaled by the load change between the two runs (floor as the gauge)
        plain_us = 1e6 / plain_["messages_per_s"] * floor / plain_["crypto_floor_us_same_time"]
        out["secure_vs_crypto_floor"][name] = {
            "us_per_message": sec["us_per_message"],
            "crypto_floor_us": floor,
            "ratio_to_floor": round(sec["us_per_message"] / floor, 2),
            "ratio_to_floor_plus_plain_storage": round(sec["us_per_message"] / (floor + plain_us), 2),
        }
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--latency", type=int, default=500)
    p.add_argument("--mcp-calls", type=int, default=200)
    p.add_argument("--no-mcp", action="store_true")
    a = p.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (make state-engines)")
    print(json.dumps(asyncio.run(main(a)), indent=2))
