"""One load-client process of bench/http_load.py: ``sessions`` MCP sessions over streamable HTTP.

    python bench/_load_client.py   (reads its job as one JSON line on stdin)

The job: ``{"url", "tool", "keys": [API key or null per session], "seconds", "run", "tag",
"warmup"}`` (``run``: this run's tag, in every message of every process; ``tag``: this process's).
Each session opens the handshake era (``initialize`` + ``notifications/initialized``) on its
own HTTP connection, makes ``warmup`` calls, then the process prints ``ready`` and waits for
``go`` on stdin: every process of a run starts its measured phase together. Then each session
calls ``tool`` in a closed loop (one call in flight per session) until ``seconds`` have passed,
every call with a unique message; the reply must be the JSON-RPC response with the call's own
id and ``Echo: <its message>``. A reply carrying another call's id or message counts as
``misrouted``; anything else that is not the expected reply (HTTP error, JSON-RPC error,
``isError``, a timeout) as ``errors``. A request on a connection idle for over a second that
the server had closed (its keep-alive timeout) is sent again once on a new one (``reconnects``). The process prints one JSON line: latencies (ms),
counts, its own CPU seconds, and the monotonic start and end of its measured phase (one clock for all processes).

Plain httpx (no MCP SDK on the client side): the SDK's client costs more CPU per call than the
gateway under test, and this machine has two cores for both.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import httpx
import orjson

PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
IDLE_RECONNECT_S = 1.0  # idle longer than this, a closed connection is the server's keep-alive timeout


def parse_reply(resp: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of one POST's answer: a JSON body or an SSE stream's data events."""
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        doc = orjson.loads(resp.content)
        return doc if isinstance(doc, list) else [doc]
    out: list[dict[str, Any]] = []
    for event in resp.content.split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if data:
            out.append(orjson.loads(data))
    return out


def verdict(resp: httpx.Response, rid: int, message: str, run_tag: str) -> str:
    """'ok', 'misrouted' (the reply of another call: its id, or a message of this run that is
    not this call's) or 'error' (anything else that is not ``Echo: <message>`` under ``rid``)."""
    if resp.status_code != 200:
        return "error"
    replies = [m for m in parse_reply(resp) if "id" in m and ("result" in m or "error" in m)]
    if len(replies) != 1:
        return "error"
    reply = replies[0]
    if reply["id"] != rid:
        return "misrouted"
    result = reply.get("result") or {}
    content = result.get("content") or [{}]
    text = content[0].get("text") if isinstance(content[0], dict) else None
    if not result.get("isError") and text == f"Echo: {message}":
        return "ok"
    if isinstance(text, str) and text != f"Echo: {message}" and text.startswith("Echo: ") and run_tag in text:
        return "misrouted"  # another call's message
    return "error"


class Session:
    def __init__(self, url: str, key: str | None, run_tag: str) -> None:
        headers = {"accept": ACCEPT, "content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        self.url, self.run_tag = url, run_tag
        # one connection per session: concurrency comes from sessions, as with real agents
        self.http = httpx.AsyncClient(
            headers=headers, timeout=60, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        )
        self.next_id = 0
        self.last = time.monotonic()
        self.reconnects = 0

    async def post(self, msg: dict[str, Any]) -> httpx.Response:
        body = orjson.dumps(msg)
        idle = time.monotonic() - self.last
        try:
            r = await self.http.post(self.url, content=body)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            if idle < IDLE_RECONNECT_S:
                raise
            # the server closed the kept-alive connection while it idled (its keep-alive timeout,
            # 5 s in uvicorn and node: a loaded machine takes that long to start every client)
            self.reconnects += 1
            r = await self.http.post(self.url, content=body)
        self.last = time.monotonic()
        return r

    async def open(self) -> None:
        init = {
            "jsonrpc": "2.0",
            "id": self._id(),
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "symbi-bench-load", "version": "1"},
            },
        }
        r = await self.post(init)
        r.raise_for_status()
        sid = r.headers.get("mcp-session-id")
        if sid is None:
            raise RuntimeError(f"{self.url}: initialize answered without a session id")
        version = parse_reply(r)[0]["result"]["protocolVersion"]
        self.http.headers["mcp-session-id"] = sid
        self.http.headers["mcp-protocol-version"] = version
        r = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        r.raise_for_status()

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def call(self, tool: str, message: str) -> tuple[str, int]:
        """One tools/call; ('ok' | 'misrouted' | 'error', id)."""
        rid = self._id()
        req = {
            "jsonrpc": "2.0",
            "id": rid,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"message": message}},
        }
        r = await self.post(req)
        return verdict(r, rid, message, self.run_tag), rid

    async def close(self) -> None:
        try:
            if "mcp-session-id" in self.http.headers:
                await self.http.delete(self.url)
        finally:
            await self.http.aclose()


async def run(job: dict[str, Any]) -> dict[str, Any]:
    tag = job["tag"]
    sessions = [Session(job["url"], key, job["run"]) for key in job["keys"]]
    await asyncio.gather(*(s.open() for s in sessions))

    async def warm(s: Session) -> None:
        for _ in range(job["warmup"]):
            await s.call(job["tool"], f"{tag}-warm")

    await asyncio.gather(*(warm(s) for s in sessions))
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit("no go")
    start, cpu0 = time.monotonic(), time.process_time()
    deadline = start + job["seconds"]
    lat: list[float] = []
    counts = {"ok": 0, "misrouted": 0, "errors": 0}

    async def loop(n: int, s: Session) -> None:
        i = 0
        while time.monotonic() < deadline:
            msg = f"{tag}-s{n}-{i}-{os.urandom(4).hex()}"
            t0 = time.perf_counter()
            try:
                verdict, _ = await s.call(job["tool"], msg)
            except (httpx.HTTPError, ValueError, KeyError):
                verdict = "error"
            lat.append((time.perf_counter() - t0) * 1000.0)
            counts["errors" if verdict == "error" else verdict] += 1
            i += 1

    await asyncio.gather(*(loop(n, s) for n, s in enumerate(sessions)))
    end, cpu = time.monotonic(), time.process_time() - cpu0
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    reconnects = sum(s.reconnects for s in sessions)
    return {"start": start, "end": end, "cpu_s": cpu, "reconnects": reconnects, "latencies_ms": lat, **counts}


def main() -> int:
    job = orjson.loads(sys.stdin.readline())
    out = asyncio.run(run(job))
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
