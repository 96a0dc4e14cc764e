"""The transport to one upstream: its stdio process (sandboxed, run as another user, its
stderr logged) or streamable HTTP, messages bounded; and a read stream that tells the
session supervisor when the transport ends."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import anyio
import httpx2
from mcp import StdioServerParameters

from gateway.compat import screened_http_client
from gateway.config.model import Config, ServerConfig
from gateway.errors import SandboxUnavailable
from gateway.upstream.bounded_http import PacedGets, bounded_responses, session_gone
from gateway.upstream.fastcall import FastLane
from gateway.upstream.runas import RunAs, check_launchable, working_folder
from gateway.upstream.stderr import StderrToLog
from gateway.upstream.stdio import bounded_stdio_client
from gateway.upstream.unreadable import Unreadable

_logger = logging.getLogger("symbi.upstream")

# (command, args, cleanup): how to launch a sandboxed stdio server, and what to remove after it
CommandWrapper = Callable[[str, ServerConfig], tuple[str, list[str], Callable[[], None] | None]]


@contextlib.asynccontextmanager
async def open_transport(
    name: str,
    server: ServerConfig,
    config: Config,
    *,
    wrap_command: CommandWrapper | None,
    run_as: RunAs | None,
    call_timeout: float,
    on_oversized: Callable[[str], None],
    on_lane: Callable[[FastLane], None],
    on_unreadable: Callable[[Unreadable], None],
    on_session_gone: Callable[[], None],
) -> AsyncIterator[Any]:
    """The (read, write) streams of one upstream: its stdio process (sandboxed when
    ``servers.X.sandbox`` says so, run as ``run_as``, stderr logged) or streamable HTTP, both
    with messages bounded by ``mcp.max_message_bytes`` and a message whose text is not valid
    UTF-8 answered at once (``gateway.upstream.unreadable``, told to ``on_unreadable``); an
    HTTP server's ``404`` to our session is told to ``on_session_gone``."""
    if server.command is not None:
        params, cleanup = await _stdio_launch(name, server, config, wrap_command, run_as)
        try:
            with StderrToLog(name) as errlog:
                async with bounded_stdio_client(
                    params,
                    max_message_bytes=config.mcp.max_message_bytes,
                    errlog=errlog,
                    on_oversized=on_oversized,
                    on_lane=on_lane,
                    on_unreadable=on_unreadable,
                    name=name,
                ) as streams:
                    yield streams
        finally:
            if cleanup is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(cleanup)
    else:
        async with _http_streams(
            name, server, config, call_timeout, on_oversized, on_unreadable, on_session_gone
        ) as streams:
            yield streams


@contextlib.asynccontextmanager
async def _http_streams(
    name: str,
    server: ServerConfig,
    config: Config,
    call_timeout: float,
    on_oversized: Callable[[str], None],
    on_unreadable: Callable[[Unreadable], None],
    on_session_gone: Callable[[], None],
) -> AsyncIterator[Any]:
    """A streamable-HTTP upstream's streams: bounded messages, paced GET streams, its session's
    ``404`` told to ``on_session_gone``."""
    assert server.url is not None
    if server.unsafe_plain_http:
        _logger.warning(
            "UNSAFE: upstream %s is reached over plain HTTP: its calls can be read and its answers"
            " changed on the way (servers.%s.unsafe_plain_http)",
            name,
            name,
        )
    timeout = httpx2.Timeout(config.mcp.connection_timeout_s, read=call_timeout + 5)
    limit = config.mcp.max_message_bytes
    gets = PacedGets()  # a server's retry: 0 is not a reconnect loop (bounded_http)
    hooks: dict[str, list[Callable[..., Any]]] = {
        "request": [gets.on_request],
        "response": [
            bounded_responses(limit, on_oversized),
            session_gone(on_session_gone),
            gets.on_response,
        ],
    }
    async with httpx2.AsyncClient(headers=dict(server.headers), timeout=timeout, event_hooks=hooks) as hc:
        async with screened_http_client(
            server.url,
            http_client=hc,
            max_sse_event_size=limit,
            seen=on_unreadable,
            reopen_get=lambda: not gets.refused,
        ) as streams:
            yield streams


async def _stdio_launch(
    name: str,
    server: ServerConfig,
    config: Config,
    wrap_command: CommandWrapper | None,
    run_as: RunAs | None,
) -> tuple[StdioServerParameters, Callable[[], None] | None]:
    """What to start for a stdio upstream, and the sandbox's cleanup: the command wrapped in its
    sandbox tier (refused when none is available), its working folder, the run-as user."""
    assert server.command is not None
    command, args = server.command, list(server.args)
    cleanup: Callable[[], None] | None = None
    if server.sandbox not in (None, "none"):
        if wrap_command is None:  # never run an untrusted server unsandboxed
            raise SandboxUnavailable(f"upstream {name!r} asks for sandbox {server.sandbox!r}: none available")
        command, args, cleanup = wrap_command(name, server)
    env = dict(server.env)
    cwd = server.cwd  # sandboxed: None unless configured (never the config folder)
    if run_as is not None:  # its home first: HOME, TMPDIR and perhaps its working folder
        await anyio.to_thread.run_sync(run_as.make_home, name)
    if server.sandbox in (None, "none"):
        cwd = await anyio.to_thread.run_sync(working_folder, name, server, config.config_dir, run_as)
    if run_as is not None:
        await anyio.to_thread.run_sync(check_launchable, name, server, run_as)
        command, args = run_as.argv(name, command, args)
        env = run_as.env(name, env)
    params = StdioServerParameters(command=command, args=args, env=env or None, cwd=str(cwd) if cwd else None)
    return params, cleanup


class WatchedStream:
    """A read stream that tells us when the transport ends (the process died, HTTP closed)."""

    def __init__(self, inner: Any, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close = on_close
        self.last_context = getattr(inner, "last_context", None)

    def __aiter__(self) -> WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._inner.__anext__()
        except (StopAsyncIteration, anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_close()
            raise StopAsyncIteration from None
        if isinstance(item, Exception):
            _logger.debug("transport exception: %s", item)
        return item

    async def receive(self) -> Any:
        return await self.__anext__()

    async def aclose(self) -> None:
        self._on_close()
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        self._on_close()
        close = getattr(self._inner, "close", None)
        if close:
            close()
