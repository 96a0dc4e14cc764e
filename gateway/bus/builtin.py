"""The built-in ``bus`` server: the agent bus as MCP tools and resources.

Tools (``bus__send``, ``bus__request``, ``bus__reply``, ``bus__publish``, ``bus__subscribe``,
``bus__unsubscribe``, ``bus__receive``) pass the whole call chain like any tool; inside, the
bus asks the policy again with its own kinds (``bus/send``, ``bus/publish``,
``bus/subscribe``). Resources: ``bus://inbox`` and ``bus://topics/{name}`` (what is waiting,
metadata only); ``resources/subscribe`` on them pushes ``notifications/resources/updated``
when a message arrives, and ``bus__receive`` takes the messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import types

from gateway.bus.core import Bus, validate_topic
from gateway.bus.crypto import TOPIC_KEYS_CAP
from gateway.bus.results import receive_ceiling, tool_result
from gateway.context import CallContext, Principal
from gateway.errors import ArgumentsInvalid, BusQuotaExceeded, CatalogError, UnknownTool
from gateway.policy.decision import RESULT_ENVELOPE_BYTES
from gateway.policy.results import result_cap

_logger = logging.getLogger("symbi.bus")

SERVER_NAME = "bus"
INBOX_URI = "bus://inbox"
TOPIC_PREFIX = "bus://topics/"
NOT_RECORDED = "[not recorded]"  # what the audit log gets instead of a message body

_BODY = {"description": "The message: any JSON value (encrypted end to end inside the gateway)."}
_TO = {"type": "string", "minLength": 1, "description": "The recipient agent's id or name."}
_TOPIC = {"type": "string", "minLength": 1, "maxLength": 128}
_ANN = {"readOnlyHint": False, "destructiveHint": False, "idempotentHint": False, "openWorldHint": False}


def _tool(name: str, description: str, props: dict[str, Any], required: list[str]) -> types.Tool:
    return types.Tool.model_validate(
        {
            "name": name,
            "description": description,
            "inputSchema": {
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            },
            "annotations": _ANN,
        }
    )


TOOLS = [
    _tool(
        "send",
        "Send a message to another agent (delivered once, in order; waits in its inbox if it is away).",
        {
            "to": _TO,
            "body": _BODY,
            "ttl_s": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "Seconds before an unread message expires.",
            },
        },
        ["to", "body"],
    ),
    _tool(
        "request",
        "Send a request to another agent and wait for its reply (or a timeout error).",
        {"to": _TO, "body": _BODY, "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 600000}},
        ["to", "body", "timeout_ms"],
    ),
    _tool(
        "reply",
        "Answer a request received with bus__receive (kind 'request').",
        {"request_id": {"type": "string", "minLength": 1}, "body": _BODY},
        ["request_id", "body"],
    ),
    _tool(
        "publish",
        "Publish a message to a topic (name: letters, digits, '.', '_', '-'; no wildcards).",
        {"topic": {**_TOPIC, "pattern": "^[A-Za-z0-9._-]{1,128}$"}, "body": _BODY},
        ["topic", "body"],
    ),
    _tool(
        "subscribe",
        "Subscribe to a topic; '*' and '?' match within one dot-separated part. A subscription "
        "expires (expires_ms in the result): subscribe again to renew it.",
        {"topic": _TOPIC},
        ["topic"],
    ),
    _tool("unsubscribe", "Stop a subscription made with bus__subscribe.", {"topic": _TOPIC}, ["topic"]),
    _tool(
        "receive",
        "Take the messages waiting for this agent (direct, requests, topics), oldest first.",
        {
            "max": {"type": "integer", "minimum": 1, "maximum": 1000},
            "wait_ms": {"type": "integer", "minimum": 0, "maximum": 60000},
        },
        [],
    ),
]

RESOURCES = [
    types.Resource(
        uri=INBOX_URI,
        name="bus-inbox",
        mime_type="application/json",
        description="Messages waiting for this agent (count and metadata; take them with "
        "bus__receive). Subscribe to be notified when one arrives.",
    )
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template=TOPIC_PREFIX + "{name}",
        name="bus-topic",
        mime_type="application/json",
        description="A topic this agent subscribes to; subscribe to the resource to "
        "be notified when a message on it arrives.",
    )
]


def receive_budget(call: CallContext) -> int:
    """The bytes of messages one ``bus__receive`` may take: its result must fit the policy's
    ``max_result_bytes``, since a result cut to it after the messages were settled loses them
    (marked delivered, never read), and ``RECEIVE_MAX_BYTES`` whatever the policy says."""
    cap = result_cap(call)
    if cap is None:
        return receive_ceiling()
    return min(max(cap - RESULT_ENVELOPE_BYTES, 0), receive_ceiling())


class BusBuiltin:
    name = SERVER_NAME
    code_tools = False

    def __init__(self, bus: Bus, *, expire_interval_s: float = 5.0) -> None:
        self.bus = bus
        self.expire_interval_s = expire_interval_s
        # agent -> uri -> client connections that asked for notifications/resources/updated
        self._watch: dict[str, dict[str, weakref.WeakSet[Any]]] = {}
        self._watchers: set[str] = set()
        self._tg: anyio.abc.TaskGroup | None = None
        self._handlers: dict[str, Callable[[Principal, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "send": self._send,
            "request": self._request,
            "reply": self._reply,
            "publish": self._publish,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "receive": self._receive,
        }

    # -- listing ---------------------------------------------------------------------------

    def tools(self) -> list[types.Tool]:
        return TOOLS

    def resources(self) -> list[types.Resource]:
        return RESOURCES

    def templates(self) -> list[types.ResourceTemplate]:
        return TEMPLATES

    # -- tools -----------------------------------------------------------------------------

    async def call(self, call: CallContext) -> types.CallToolResult:
        # bodies never reach the audit log, whatever the policy redacts
        if call.audit_arguments is not None and "body" in call.audit_arguments:
            call.audit_arguments = {**call.audit_arguments, "body": NOT_RECORDED}
        assert call.tool is not None
        name = call.tool.original_name
        handler = self._handlers.get(name)
        if handler is None:
            raise UnknownTool(f"no bus tool {name!r}")
        if name == "receive":
            out = await self._receive(call.principal, call.arguments, receive_budget(call))
        else:
            out = await handler(call.principal, call.arguments)
        return tool_result(out)

    async def _send(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        msg = await self.bus.send(p, a.get("to"), a.get("body"), ttl_s=a.get("ttl_s"))
        return {"id": msg.id, "to": msg.recipient, "expires_ms": msg.expires_ms}

    async def _request(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        timeout_ms = a.get("timeout_ms")
        if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 1:
            raise ArgumentsInvalid("timeout_ms must be a positive integer")
        reply = await self.bus.request(p, a.get("to"), a.get("body"), timeout_s=timeout_ms / 1000)
        return {"reply": reply.as_dict()}

    async def _reply(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        msg = await self.bus.reply(p, a.get("request_id"), a.get("body"))
        return {"id": msg.id, "to": msg.recipient, "reply_to": msg.reply_to}

    async def _publish(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        res = await self.bus.publish(p, a.get("topic"), a.get("body"))
        return {"id": res.id, "delivered_to": res.delivered_to, "refused": list(res.refused)}

    async def _subscribe(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        until_ms = await self.bus.subscribe(p, a.get("topic"))
        return {"subscribed": a.get("topic"), "expires_ms": until_ms}

    async def _unsubscribe(self, p: Principal, a: dict[str, Any]) -> dict[str, Any]:
        return {"unsubscribed": await self.bus.unsubscribe(p, a.get("topic"))}

    async def _receive(self, p: Principal, a: dict[str, Any], max_bytes: int | None = None) -> dict[str, Any]:
        got = await self.bus.receive(
            p, max_items=int(a.get("max", 16)), wait_s=int(a.get("wait_ms", 0)) / 1000, max_bytes=max_bytes
        )
        return {"messages": [r.as_dict() for r in got]}

    # -- resources -------------------------------------------------------------------------

    async def read_resource(self, call: CallContext) -> types.ReadResourceResult:
        agent = await self.bus.ensure_agent(call.principal)
        uri = call.target
        if uri == INBOX_URI:
            doc: dict[str, Any] = {"agent": agent, "waiting": await self.bus.backend.pending_count(agent)}
        elif uri.startswith(TOPIC_PREFIX):
            topic = validate_topic(uri.removeprefix(TOPIC_PREFIX), pattern=True, where="uri")
            subs = await self.bus.backend.subscriptions_of(agent)
            doc = {"agent": agent, "topic": topic, "subscribed": topic in subs}
        else:
            raise CatalogError(f"unknown resource {uri!r}")
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(doc))]
        )

    async def watch(self, uri: str, principal: Principal, connection: Any, on: bool) -> None:
        """resources/subscribe (on) or unsubscribe (off) for a client connection."""
        agent = await self.bus.ensure_agent(principal)
        if uri != INBOX_URI:
            validate_topic(uri.removeprefix(TOPIC_PREFIX), pattern=True, where="uri")
        if connection is None:
            return
        self._prune(agent)  # URIs no live connection watches any more do not count
        watched = self._watch.get(agent, {})
        if on and uri not in watched and len(watched) > self.bus.max_subscriptions:
            # each URI is an entry held for the connection: the inbox and one per subscription
            raise BusQuotaExceeded(
                f"agent {agent} watches {len(watched)} bus resources "
                "(bus.max_subscriptions_per_agent topics and the inbox): unsubscribe from one first"
            )
        sessions = self._watch.setdefault(agent, {}).setdefault(uri, weakref.WeakSet())
        if on:
            sessions.add(connection)
            if agent not in self._watchers and self._tg is not None:
                self._watchers.add(agent)
                self._tg.start_soon(self._watcher, agent)
        else:
            sessions.discard(connection)
            self._prune(agent)

    def _prune(self, agent: str) -> None:
        """Drop the watch entries no live connection holds any more (closed sessions)."""
        watched = self._watch.get(agent)
        if watched is None:
            return
        for uri in [u for u, conns in watched.items() if not len(conns)]:
            del watched[uri]
        if not watched and agent not in self._watchers:
            del self._watch[agent]

    async def _watcher(self, agent: str) -> None:
        """Push notifications/resources/updated to the sessions watching this agent's inbox/topics."""
        cursor: Any = None
        try:
            while any(len(s) for s in self._watch.get(agent, {}).values()):
                try:
                    cursor, arrived = await self.bus.backend.wait_arrival(agent, 5.0, cursor)
                except Exception:  # noqa: BLE001 - the backend is down: retry, the sends report it
                    await anyio.sleep(1.0)
                    continue
                uris = {INBOX_URI} | {TOPIC_PREFIX + m.topic for m in arrived if m is not None and m.topic}
                watched = self._watch.get(agent, {})
                for uri in uris:
                    for conn in list(watched.get(uri, ())):
                        with contextlib.suppress(Exception):
                            await conn.outbound.notify("notifications/resources/updated", {"uri": uri})
        finally:
            self._watchers.discard(agent)
            self._prune(agent)

    def footprint(self) -> dict[str, int]:
        """What the bus and its notification watches hold per agent (``/api/state`` owned)."""
        return {
            **self.bus.footprint(),
            "bus_watched_agents": len(self._watch),
            "bus_watched_uris": sum(len(uris) for uris in self._watch.values()),
            "bus_watchers": len(self._watchers),
        }

    def bounded(self) -> dict[str, tuple[int, int]]:
        """Caches with a fixed cap: name -> (size, cap)."""
        return {"bus_topic_keys": (self.bus.ring.topic_keys, TOPIC_KEYS_CAP)}

    # -- background ------------------------------------------------------------------------

    def close(self) -> None:
        self.bus.ring.close()

    async def run(self, _gw: Any) -> None:
        """Started with the gateway: expiry sweeps and the notification watchers."""
        try:
            await self.bus.backend.start()
            await self.bus.publish_configured()  # hosted agents are addressable before they run
        except Exception as e:  # noqa: BLE001 - sends will report the backend's error
            _logger.warning("bus backend not reachable at start: %s", e)
        try:  # session agents an earlier run did not end (the backend down: the sweep retries)
            await self.bus.forget_left_behind()
        except Exception as e:  # noqa: BLE001 - the bus serves nevertheless
            _logger.warning("bus: clearing what an earlier run left failed: %s", e)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                while True:
                    await anyio.sleep(self.expire_interval_s)
                    try:
                        await self.bus.expire()
                    except Exception as e:  # noqa: BLE001 - logged; the next sweep tries again
                        _logger.warning("bus expiry sweep failed: %s", e)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.bus.stop_tasks()  # (a park or the re-check never outlives the backend)
                await self.bus.backend.close()
