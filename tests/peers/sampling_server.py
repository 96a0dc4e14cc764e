"""A real MCP server (SDK ``MCPServer``, stdio) that asks its client: sampling, elicitation, roots.

- ``ask(what, max_tokens, text)``: sends one ``sampling/createMessage`` (``what = "sampling"``,
  the text as the user's message, ``max_tokens`` asked), ``elicitation/create`` (``"elicit"``,
  the text as its message; ``"elicit_url"``: URL mode, the text as the URL) or ``roots/list``
  (``"roots"``) and returns what came back
  (``answered: ...``) or the JSON-RPC error (``error <code>: <message>``).
- ``flood(what, count, kilobytes)``: sends ``count`` such requests at once, each carrying a
  text of ``kilobytes`` KiB, and returns ``{"answered": n, "errors": {"<code>": n}}`` as JSON:
  a hostile server's flood, counted from its own side.
- prompt ``sampled``: samples the client's model while it is got (a request during a
  ``prompts/get``, not a tool call).
- prompt ``greet(name)``: its argument's completion samples the client's model for the values
  (a request during a ``completion/complete``).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CompleteRequestParams, CompleteResult, Completion, SamplingMessage, TextContent

mcp = MCPServer("sampling-test-server", version="1.0")


async def _one(ctx: Context, what: str, max_tokens: int, text: str) -> str:
    session = ctx.session
    if what == "sampling":
        result: Any = await session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text=text))],
            max_tokens=max_tokens,
        )
        return str(getattr(result.content, "text", result.content))
    if what == "elicit":
        schema = {"type": "object", "properties": {"name": {"type": "string"}}}
        result = await session.elicit(text, schema)
        return str(result.action)
    if what == "elicit_url":  # the text is the URL the user is asked to open
        result = await session.elicit_url("Please sign in", text, "e1")
        return str(result.action)
    result = await session.list_roots()
    return ",".join(str(r.uri) for r in result.roots)


@mcp.tool()
async def ask(what: str, ctx: Context, max_tokens: int = 20, text: str = "say who you are") -> str:
    """Ask the client once; its answer or the JSON-RPC error."""
    try:
        return f"answered: {await _one(ctx, what, max_tokens, text)}"
    except MCPError as e:
        return f"error {e.error.code}: {e.error.message}"


@mcp.tool()
async def flood(what: str, count: int, ctx: Context, kilobytes: int = 0) -> str:
    """Ask the client ``count`` times at once; the answers and errors counted."""
    text = "x" * (kilobytes * 1024) or "flood"
    answered = 0
    errors: dict[str, int] = {}

    async def one() -> None:
        nonlocal answered
        try:
            await _one(ctx, what, 20, text)
            answered += 1
        except MCPError as e:
            errors[str(e.error.code)] = errors.get(str(e.error.code), 0) + 1
        except Exception as e:  # noqa: BLE001 - counted by kind
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(one)
    return json.dumps({"answered": answered, "errors": errors})


@mcp.prompt()
async def sampled(ctx: Context) -> str:
    """A prompt whose text the client's model writes (it samples while the prompt is got)."""
    return await _one(ctx, "sampling", 20, "write a prompt")


@mcp.prompt()
async def greet(name: str) -> str:
    """A prompt with an argument to complete."""
    return f"hello {name}"


async def _complete(ctx: ServerRequestContext[Any], params: CompleteRequestParams) -> CompleteResult:
    """The completion's values, written by the client's model (or the JSON-RPC error's text)."""
    try:
        result: Any = await ctx.session.create_message(
            [SamplingMessage(role="user", content=TextContent(type="text", text="complete a name"))],
            max_tokens=20,
        )
        value = str(getattr(result.content, "text", result.content))
    except MCPError as e:
        value = f"error {e.error.code}: {e.error.message}"
    return CompleteResult(completion=Completion(values=[value[:100]]))


mcp._lowlevel_server.add_request_handler("completion/complete", CompleteRequestParams, _complete)


if __name__ == "__main__":
    mcp.run()
