"""The floor for a stdio MCP proxy (bench/speed.py): a JSON relay with no checks at all.

    python bench/peers/json_relay.py PREFIX -- COMMAND [ARGS...]

Starts COMMAND as a child over stdio and relays newline-delimited JSON-RPC both ways. Every
message is parsed and re-serialised (stdlib json); tool names are renamed like a gateway does
(``PREFIX__name`` downstream, ``name`` upstream), so the work left is the least any proxy
that looks at messages must do: two reads, two parses, two writes per hop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def _rename_request(msg: dict[str, Any], prefix: str) -> None:
    if msg.get("method") == "tools/call":
        params = msg.get("params") or {}
        name = params.get("name", "")
        if isinstance(name, str) and name.startswith(prefix):
            params["name"] = name[len(prefix) :]


def _rename_result(msg: dict[str, Any], prefix: str) -> None:
    tools = (msg.get("result") or {}).get("tools") if isinstance(msg.get("result"), dict) else None
    if isinstance(tools, list):
        for tool in tools:
            tool["name"] = prefix + tool["name"]


async def _pump(reader: asyncio.StreamReader, write: Any, rename: Any, prefix: str) -> None:
    while line := await reader.readline():
        msg = json.loads(line)
        if isinstance(msg, dict):
            rename(msg, prefix)
        write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")


async def main(prefix: str, argv: list[str]) -> None:
    loop = asyncio.get_running_loop()
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=2**24
    )
    assert child.stdin is not None and child.stdout is not None
    stdin = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    out_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout)
    down = asyncio.create_task(_pump(stdin, child.stdin.write, _rename_request, prefix))
    up = asyncio.create_task(_pump(child.stdout, out_transport.write, _rename_result, prefix))
    await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    child.terminate()
    await child.wait()


if __name__ == "__main__":
    sep = sys.argv.index("--")
    asyncio.run(main(sys.argv[1] + "__", sys.argv[sep + 1 :]))
