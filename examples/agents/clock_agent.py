"""A small hosted agent: an MCP client (the Python SDK) that uses the gateway's tools.

The runtime starts it in a sandbox tier with no network. Its one way out is the gateway's
Unix socket (``$SYMBI_GATEWAY_SOCKET``), where it authenticates with the credential the
runtime made for this run (``$SYMBI_AGENT_TOKEN``): every call it makes passes the gateway's
verification, policy and audit as its own principal (``agent:NAME``).

It asks the time tool for the current time, echoes a note through server-everything, and
exits 0. Test modes: ``MODE=hog`` allocates memory until its memory budget kills it,
``PROBE_PORT=N`` first tries to reach a TCP service on the host (it must fail), ``MODE=linger``
stays up for ``LINGER_S`` seconds and prints its credential (so a test can try it afterwards).
"""

from __future__ import annotations

import json
import os
import socket
import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation


async def main() -> int:
    mode = os.environ.get("MODE", "normal")
    if mode == "hog":
        blocks = []
        while True:  # the cgroup's memory limit ends this (OOM kill)
            blocks.append(bytearray(8 * 1024 * 1024))
    if os.environ.get("PROBE_PORT"):
        target = int(os.environ["PROBE_PORT"])
        try:
            socket.create_connection(("127.0.0.1", target), timeout=2).close()
            print(json.dumps({"probe": "CONNECTED"}), flush=True)
        except OSError as e:
            print(json.dumps({"probe": "blocked", "error": type(e).__name__}), flush=True)
    transport = httpx2.AsyncHTTPTransport(uds=os.environ["SYMBI_GATEWAY_SOCKET"])
    headers = {"Authorization": f"Bearer {os.environ['SYMBI_AGENT_TOKEN']}"}
    async with (
        httpx2.AsyncClient(transport=transport, headers=headers) as http,
        streamable_http_client("http://127.0.0.1/mcp", http_client=http) as (read, write),
        ClientSession(read, write, client_info=Implementation(name="clock-agent", version="1")) as session,
    ):
        await session.initialize()
        tools = {t.name for t in (await session.list_tools()).tools}
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        note = await session.call_tool("everything__echo", {"message": "clock agent was here"})
        print(
            json.dumps(
                {
                    "tools": len(tools),
                    "time_error": now.is_error,
                    "echo_error": note.is_error,
                    "echo": note.content[0].text if note.content else None,
                }
            ),
            flush=True,
        )
        if mode == "linger":  # tests: stay up a while (and show the test the run's credential)
            print(json.dumps({"token": os.environ["SYMBI_AGENT_TOKEN"]}), flush=True)
            await anyio.sleep(float(os.environ.get("LINGER_S", "30")))
        return 1 if now.is_error or note.is_error else 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
