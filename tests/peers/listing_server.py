"""A raw JSON-lines MCP server (handshake era, no SDK) that lists what a JSON file says.

``$LISTING`` is a file ``{"tools": [...], "resources": [...], "templates": [...], "texts":
{uri: text}, "results": {tool: result}, "many_tools": N}`` (wire objects), read again at every
request, so a test changes what the server offers by rewriting it. ``many_tools``: N more tools
``n0``...``n{N-1}``. The tool ``announce`` sends every list_changed (after the test rewrote the
file); any other listed tool answers ``results[tool]`` (a ``resource_link``, say), else
``<tool> ran``. ``resources/read`` answers ``reads[uri]`` (a whole result: contents of other
URIs, say), else ``texts[uri]``, else ``<$NAME> read <uri>``, and appends the URI to ``$READS``
when set (a line each), so a test sees which reads reached it. ``$ANNOUNCE_EVERY`` (seconds):
it also sends tools list_changed that often, unasked (a test whose calls are refused). With ``"prompts": [...]`` in the
file at start it serves prompts too: ``prompts/get`` answers ``prompt_results[name]``, else one
user message ``<name> got``. Standard library only: it starts fast.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

NAME = os.environ.get("NAME", "listing")
ANNOUNCE = {"name": "announce", "description": "Send list_changed.", "inputSchema": {"type": "object"}}


_WRITING = threading.Lock()  # the announcer thread's lines and the answers, one at a time


def send(msg: dict[str, Any]) -> None:
    with _WRITING:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def announce_every(seconds: float) -> None:
    while True:
        time.sleep(seconds)
        send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})


def listing() -> dict[str, Any]:
    with open(os.environ["LISTING"], encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    many = [
        {"name": f"n{i}", "description": "x", "inputSchema": {"type": "object"}}
        for i in range(int(doc.get("many_tools", 0)))
    ]
    doc["tools"] = [ANNOUNCE, *doc.get("tools", []), *many]
    return doc


def answer(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method == "initialize":
        changing = {"listChanged": True}
        caps: dict[str, Any] = {"tools": changing, "resources": changing}
        if "prompts" in listing():  # only then: the other tests' upstreams are asked for no prompts
            caps["prompts"] = changing
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": caps,
            "serverInfo": {"name": NAME, "version": "1"},
        }
    if method == "tools/list":
        return {"tools": listing()["tools"]}
    if method == "resources/list":
        return {"resources": listing().get("resources", [])}
    if method == "resources/templates/list":
        return {"resourceTemplates": listing().get("templates", [])}
    if method == "resources/read":
        uri = params["uri"]
        if reads := os.environ.get("READS"):
            with open(reads, "a", encoding="utf-8") as f:
                f.write(uri + "\n")
        doc = listing()
        if (whole := doc.get("reads", {}).get(uri)) is not None:
            return dict(whole)
        text = doc.get("texts", {}).get(uri, f"{NAME} read {uri}")
        return {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}
    if method == "prompts/list":
        return {"prompts": listing().get("prompts", [])}
    if method == "prompts/get":
        name = params["name"]
        got: dict[str, Any] | None = listing().get("prompt_results", {}).get(name)
        return got or {"messages": [{"role": "user", "content": {"type": "text", "text": f"{name} got"}}]}
    if method == "tools/call":
        result: dict[str, Any] | None = listing().get("results", {}).get(params["name"])
        return result or {"content": [{"type": "text", "text": f"{params['name']} ran"}]}
    return {}  # ping


def main() -> None:
    if every := os.environ.get("ANNOUNCE_EVERY"):
        threading.Thread(target=announce_every, args=(float(every),), daemon=True).start()
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("id") is None:
            continue  # a notification
        method, params = msg.get("method", ""), msg.get("params") or {}
        send({"jsonrpc": "2.0", "id": msg["id"], "result": answer(method, params)})
        if method == "tools/call" and params.get("name") == "announce":
            for kind in ("tools", "resources"):
                send({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})


if __name__ == "__main__":
    main()
