"""An MCP server exposing what the conformance suite's server scenarios expect.

The suite (``@modelcontextprotocol/conformance``) calls fixed tool, resource and prompt
names (``test_simple_text``, ``test://static-text``, ``test_prompt_with_arguments``...).
This server provides them with the SDK's ``MCPServer`` so the suite can run against it
directly and through the gateway in pass-through mode, and the two counts can be compared.

Run: ``python fixture_server.py --port 3100`` (streamable HTTP at 127.0.0.1:3100/mcp) or
``python fixture_server.py --stdio``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

from mcp import types
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from pydantic import BaseModel, Field

_logger = logging.getLogger("conformance.fixture")

# A 1x1 PNG and a minimal WAV: the suite checks mime types and that data is present.
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_B64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"


class MemoryEventStore(EventStore):
    """Keeps SSE events so a client that reconnects with Last-Event-ID gets the rest (SEP-1699)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        for s, e, msg in self._events:
            if s == stream and int(e) > int(last_event_id) and msg is not None:
                await send_callback(EventMessage(msg, e))
        return stream


class UserResponse(BaseModel):
    username: str = Field(description="User's response")
    email: str = Field(description="User's email address")


class Sep1034Defaults(BaseModel):
    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


class Sep1330Enums(BaseModel):
    untitledSingle: str = Field(
        description="Simple enum without titles",
        json_schema_extra={"enum": ["option1", "option2", "option3"]},
    )
    titledSingle: str = Field(
        description="Enum with titled options",
        json_schema_extra={
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ]
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titles",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
    )


def build_server() -> MCPServer:
    """The fixture: every tool, resource, template and prompt the server scenarios call."""
    mcp = MCPServer("symbi-conformance-fixture", version="1.0.0")
    subscriptions: set[str] = set()

    @mcp.tool()
    def test_simple_text() -> str:
        """Returns simple text content."""
        return "This is a simple text response for testing."

    @mcp.tool()
    def test_image_content() -> list[types.ImageContent]:
        """Returns image content."""
        return [types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")]

    @mcp.tool()
    def test_audio_content() -> list[types.AudioContent]:
        """Returns audio content."""
        return [types.AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")]

    @mcp.tool()
    def test_embedded_resource() -> list[types.EmbeddedResource]:
        """Returns an embedded text resource."""
        return [
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="test://embedded-resource",
                    mime_type="text/plain",
                    text="This is an embedded resource content.",
                ),
            )
        ]

    @mcp.tool()
    def test_multiple_content_types() -> list[
        types.TextContent | types.ImageContent | types.EmbeddedResource
    ]:
        """Returns text, image and resource content together."""
        return [
            types.TextContent(type="text", text="Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
            types.EmbeddedResource(
                type="resource",
                resource=types.TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text='{"test": "data", "value": 123}',
                ),
            ),
        ]

    @mcp.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log messages while it runs."""
        for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            await ctx.info(text)
            await asyncio.sleep(0.05)
        return "Tool with logging executed successfully"

    @mcp.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50, 100 of 100."""
        for step in (0, 50, 100):
            await ctx.report_progress(step, 100, f"Completed step {step} of 100")
            await asyncio.sleep(0.05)
        meta = ctx.request_context.meta or {}
        return str(meta.get("progress_token", 0))

    @mcp.tool()
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Asks the client's LLM (sampling/createMessage)."""
        result = await ctx.session.create_message(
            messages=[
                types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))
            ],
            max_tokens=100,
            related_request_id=ctx.request_id,  # answer on this call's stream, not the GET stream
        )
        content = result.content
        text = content.text if isinstance(content, types.TextContent) else "No response"
        return f"LLM response: {text}"

    @mcp.tool()
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Asks the user for input (elicitation/create)."""
        result = await ctx.elicit(message=message, schema=UserResponse)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"User response: action={result.action}, content={content}"

    @mcp.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        """Elicitation whose schema has defaults for every primitive type (SEP-1034)."""
        result = await ctx.elicit(message="Please provide user information", schema=Sep1034Defaults)
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation result: action={result.action}, content={content}"

    @mcp.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        """Elicitation with the enum schema variants of SEP-1330."""
        result = await ctx.elicit(
            message="Please select values using different enum schema types", schema=Sep1330Enums
        )
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation completed: action={result.action}, content={content}"

    @mcp.tool()
    def test_error_handling() -> str:
        """Always fails (the result has isError: true)."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    @mcp.tool()
    async def test_reconnection(ctx: Context) -> str:
        """Closes its SSE stream mid-call so the client resumes with Last-Event-ID (SEP-1699)."""
        await ctx.info("Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        await ctx.info("After reconnect")
        return "Reconnection test completed"

    mcp.add_tool(
        _schema_2020_12_tool,
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
    )
    # MCPServer derives the input schema from the signature; the scenario checks the exact
    # 2020-12 keywords survive listing, so set them explicitly.
    tool = mcp._tool_manager.get_tool("json_schema_2020_12_tool")
    assert tool is not None
    tool.parameters = {
        "$schema": SCHEMA_2020_12,
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
            }
        },
        "properties": {
            "name": {"type": "string"},
            "address": {"$ref": "#/$defs/address"},
            "contactMethod": {"type": "string", "enum": ["phone", "email"]},
            "phone": {"type": "string"},
            "email": {"type": "string"},
        },
        "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
        "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
        "then": {"required": ["phone"]},
        "else": {"required": ["email"]},
        "additionalProperties": False,
    }

    @mcp.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource."""
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (a PNG)."""
        return base64.b64decode(PNG_B64)

    @mcp.resource("test://template/{id}/data", mime_type="application/json")
    def template_data(id: str) -> str:
        """A resource template with parameter substitution."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource("test://watched-resource", mime_type="text/plain")
    def watched() -> str:
        """A resource clients can subscribe to."""
        return "Watched resource content"

    @mcp.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A simple prompt without arguments."""
        return [
            UserMessage(content=types.TextContent(type="text", text="This is a simple prompt for testing."))
        ]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with required arguments."""
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(content=types.TextContent(type="text", text=text))]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt that embeds a resource."""
        return [
            UserMessage(
                content=types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
                    ),
                )
            ),
            UserMessage(
                content=types.TextContent(type="text", text="Please process the embedded resource above.")
            ),
        ]

    @mcp.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with image content."""
        return [
            UserMessage(content=types.ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
            UserMessage(content=types.TextContent(type="text", text="Please analyze the image above.")),
        ]

    @mcp.completion()  # type: ignore[no-untyped-call,untyped-decorator]  # the SDK decorator is untyped
    async def complete(ref: Any, argument: types.CompletionArgument, context: Any) -> types.Completion:
        # The suite only checks the shape; offer the typed prefix back as one candidate.
        return types.Completion(values=[argument.value] if argument.value else [], total=None, has_more=False)

    _add_input_required(mcp)
    _add_stateless_hooks(mcp)

    low = mcp._lowlevel_server

    async def subscribe(
        ctx: ServerRequestContext[Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    async def set_level(
        ctx: ServerRequestContext[Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        _logger.info("log level set to %s", params.level)
        return types.EmptyResult()

    low.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)
    low.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    return mcp


# -- 2026-07-28: input-required results (SEP-2322) and stateless diagnostics (SEP-2575) ------------


def _elicit(message: str, prop: str, typ: str = "string") -> types.ElicitRequest:
    schema = {"type": "object", "properties": {prop: {"type": typ}}, "required": [prop]}
    return types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))


def _sample(text: str, max_tokens: int = 100) -> types.CreateMessageRequest:
    msg = types.SamplingMessage(role="user", content=types.TextContent(type="text", text=text))
    return types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(messages=[msg], max_tokens=max_tokens)
    )


def _answered(ctx: Context, *keys: str) -> dict[str, Any] | None:
    """The responses for ``keys`` as plain dicts, or None unless every key was answered."""
    got = ctx.input_responses or {}
    if not all(k in got for k in keys):
        return None
    return {k: got[k].model_dump(by_alias=True, exclude_none=True) for k in keys}


def _ask(requests: dict[str, Any], state: str | None = None) -> types.InputRequiredResult:
    return types.InputRequiredResult(input_requests=requests, request_state=state)


def _add_input_required(mcp: MCPServer) -> None:
    """Tools (and a prompt) that answer with ``InputRequiredResult`` until the client supplies input.

    The SDK seals ``request_state`` on the way out and refuses a tampered one on the way
    in, so the state strings here are plain markers.
    """

    @mcp.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str | types.InputRequiredResult:
        """Asks for the user's name (one elicitation input request)."""
        got = _answered(ctx, "user_name")
        if got is None:
            return _ask({"user_name": _elicit("What is your name?", "name")})
        name = (got["user_name"].get("content") or {}).get("name", "stranger")
        return f"Hello, {name}!"

    @mcp.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str | types.InputRequiredResult:
        """Asks the client's LLM a question (one sampling input request)."""
        got = _answered(ctx, "capital_question")
        if got is None:
            return _ask({"capital_question": _sample("What is the capital of France?")})
        content = got["capital_question"].get("content") or {}
        return f"LLM said: {content.get('text', '') if isinstance(content, dict) else content}"

    @mcp.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str | types.InputRequiredResult:
        """Asks for the client's roots (one roots/list input request)."""
        got = _answered(ctx, "client_roots")
        if got is None:
            return _ask({"client_roots": types.ListRootsRequest()})
        roots = [r.get("uri") for r in got["client_roots"].get("roots", [])]
        return f"Roots: {', '.join(map(str, roots)) or '(none)'}"

    @mcp.tool()
    async def test_input_required_result_request_state(ctx: Context) -> str | types.InputRequiredResult:
        """Round-trips requestState; the final text says state-ok when it came back intact."""
        got = _answered(ctx, "confirm")
        if got is None or ctx.request_state != "confirm-pending":
            return _ask({"confirm": _elicit("Please confirm", "ok", "boolean")}, "confirm-pending")
        return "state-ok: confirmed"

    @mcp.tool()
    async def test_input_required_result_multiple_inputs(ctx: Context) -> str | types.InputRequiredResult:
        """Asks for an elicitation, a sampling and roots in one round."""
        got = _answered(ctx, "user_name", "greeting", "client_roots")
        if got is None or ctx.request_state != "multi-pending":
            requests = {
                "user_name": _elicit("What is your name?", "name"),
                "greeting": _sample("Generate a greeting", 50),
                "client_roots": types.ListRootsRequest(),
            }
            return _ask(requests, "multi-pending")
        return "All inputs received"

    @mcp.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> str | types.InputRequiredResult:
        """Two rounds of questions before the answer."""
        if ctx.request_state == "round-2" and _answered(ctx, "step2") is not None:
            return "Multi-round complete"
        if ctx.request_state == "round-1" and _answered(ctx, "step1") is not None:
            return _ask({"step2": _elicit("Step 2: What is your favorite color?", "color")}, "round-2")
        return _ask({"step1": _elicit("Step 1: What is your name?", "name")}, "round-1")

    @mcp.tool()
    async def test_input_required_result_tampered_state(ctx: Context) -> str | types.InputRequiredResult:
        """Issues a requestState; the SDK's sealing refuses a modified one."""
        if ctx.request_state == "tamper-check" and _answered(ctx, "confirm") is not None:
            return "state intact"
        return _ask({"confirm": _elicit("Please confirm", "ok", "boolean")}, "tamper-check")

    @mcp.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> str | types.InputRequiredResult:
        """Only asks for what the client declared it can do."""
        caps = ctx.client_capabilities
        requests: dict[str, Any] = {}
        if caps is not None and caps.sampling is not None:
            requests["sampling_request"] = _sample("Say hello")
        if caps is not None and caps.elicitation is not None:
            requests["elicitation_request"] = _elicit("What is your name?", "name")
        if not requests or _answered(ctx, *requests) is not None:
            return "Capabilities respected"
        return _ask(requests)

    @mcp.prompt()
    async def test_input_required_result_prompt(
        ctx: Context,
    ) -> list[UserMessage] | types.InputRequiredResult:
        """A prompt that needs context from the user first."""
        got = _answered(ctx, "user_context")
        if got is None:
            return _ask({"user_context": _elicit("What context should the prompt use?", "context")})
        context = (got["user_context"].get("content") or {}).get("context", "")
        return [UserMessage(content=types.TextContent(type="text", text=f"Use this context: {context}"))]


def _add_stateless_hooks(mcp: MCPServer) -> None:
    """Diagnostic tools of the stateless scenario: a capability check and list mutations."""
    from mcp.shared.exceptions import MCPError

    @mcp.tool()
    async def test_missing_capability(ctx: Context) -> str:
        """Needs the client's sampling capability; refuses (-32021) when it was not declared."""
        caps = ctx.client_capabilities
        if caps is None or caps.sampling is None:
            raise MCPError(
                code=-32021,
                message="this tool requires the client's sampling capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "client declared sampling"

    state = {"tool": False, "prompt": False}

    def _extra_tool() -> str:
        return "dynamic"

    def _extra_prompt() -> str:
        return "dynamic prompt"

    @mcp.tool()
    async def test_trigger_tool_change(ctx: Context) -> str:
        """Adds or removes a tool and announces the change (both protocol eras)."""
        if state["tool"]:
            mcp.remove_tool("test_dynamic_tool")
        else:
            mcp.add_tool(_extra_tool, name="test_dynamic_tool", description="Appears and disappears")
        state["tool"] = not state["tool"]
        await ctx.notify_tools_changed()
        with contextlib.suppress(Exception):  # handshake-era push; absent in 2026-07-28
            await ctx.session.send_tool_list_changed()
        return "tool list changed"

    @mcp.tool()
    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Adds or removes a prompt and announces the change (both protocol eras)."""
        if state["prompt"]:
            mcp.remove_prompt("test_dynamic_prompt")
        else:
            mcp.prompt(name="test_dynamic_prompt", description="Appears and disappears")(_extra_prompt)
        state["prompt"] = not state["prompt"]
        await ctx.notify_prompts_changed()
        with contextlib.suppress(Exception):
            await ctx.session.send_prompt_list_changed()
        return "prompt list changed"


def _schema_2020_12_tool(
    name: str = "",
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> str:
    return f"name={name} address={json.dumps(address)} contact={contactMethod} {phone or email}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--port", type=int, help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    mode.add_argument("--stdio", action="store_true", help="serve over stdio")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = build_server()
    if args.stdio:
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host="127.0.0.1",
            port=args.port,
            event_store=MemoryEventStore(),
            retry_interval=100,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
