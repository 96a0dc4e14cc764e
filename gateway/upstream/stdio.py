"""A stdio client transport whose messages are bounded, read without quadratic buffering.

The SDK's ``stdio_client`` joins every chunk onto the unfinished line and splits it again
(``(buffer + chunk).split("\\n")``): a 100 MB line from a hostile server costs gigabytes of
copying and pins a core, and there is no limit. Here a line is collected in a ``bytearray``
and only the new bytes are searched for the newline; a message longer than
``max_message_bytes`` ends the connection (the supervisor restarts the server and the calls
in flight fail), rather than being buffered.

Process start and stop reuse the SDK's own helpers (platform quirks, the grace period, tree
kill), private SDK functions reached through ``gateway.compat``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple, Protocol, TextIO, TypeVar

import anyio
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.client.stdio import StdioServerParameters, get_default_environment
from mcp.shared.message import SessionMessage

from gateway.compat import (
    drain_stdout,
    executable_command,
    parse_stdio_line,
    process_stdin_writer,
    receiver_waits_idle,
    start_stdio_process,
    stop_stdio_process,
    tap_process_stdout,
)
from gateway.upstream.fastcall import FastLane
from gateway.upstream.unreadable import Unreadable, error_message, unreadable

_logger = logging.getLogger("symbi.upstream.stdio")
_READ_CHUNK = 64 * 1024
_WRITER_FLUSH_TIMEOUT = 2.0
_COALESCE_MAX = 64
T = TypeVar("T")


class MessageTooLarge(Exception):
    """An upstream sent a message over ``mcp.max_message_bytes``."""


def split_lines(buf: bytearray, chunk: bytes, scan_from: int, max_bytes: int) -> tuple[list[bytes], int]:
    """Append ``chunk`` to ``buf``; return the complete lines taken out of it and where the
    next newline search starts. Raises ``MessageTooLarge`` when a line outgrows ``max_bytes``.
    """
    buf += chunk
    lines: list[bytes] = []
    start = 0
    pos = buf.find(b"\n", scan_from)
    while pos != -1:
        if pos - start > max_bytes:
            raise MessageTooLarge(f"a message of more than {max_bytes} bytes")
        lines.append(bytes(buf[start:pos]))
        start = pos + 1
        pos = buf.find(b"\n", start)
    del buf[:start]
    if len(buf) > max_bytes:
        raise MessageTooLarge(f"a message of more than {max_bytes} bytes (still unfinished)")
    return lines, len(buf)


def with_waiting(first: T, stream: MemoryObjectReceiveStream[T]) -> list[T]:
    """``first`` and the messages already waiting behind it on ``stream`` (at most
    ``_COALESCE_MAX``), in order. A stdio writer sends them in one pipe write: under
    concurrent calls the peer wakes once for several messages instead of once each. Nothing
    waits for a batch to fill: a lone message leaves at once."""
    out = [first]
    while len(out) < _COALESCE_MAX:
        try:
            out.append(stream.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):
            break
    return out


def writer_idle(reader: MemoryObjectReceiveStream[Any]) -> bool:
    """Whether the writer task reading ``reader`` (an unbuffered stream) waits for a message with
    none handed to it: then everything sent through it is in the pipe (or the transport's buffer,
    which keeps order), and a line written directly now comes after all of it."""
    return receiver_waits_idle(reader)


class _Pipe(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...


async def write_or_queue(
    line: bytes,
    pipe: _Pipe | None,
    reader: MemoryObjectReceiveStream[Any],
    queue: Callable[[bytes], Awaitable[None]],
) -> None:
    """A fast-lane line (both stdio lanes: to an upstream's stdin, to the client's stdout):
    into ``pipe`` now when the writer task reading ``reader`` holds nothing (``writer_idle``:
    the order of everything sent before it is kept, no task hop), else ``queue``d behind it."""
    closing = isinstance(pipe, asyncio.StreamWriter) and pipe.is_closing()
    if pipe is None or closing or not writer_idle(reader):
        await queue(line)
        return
    try:
        pipe.write(line)
        await pipe.drain()  # returns at once unless the pipe is full (flow control)
    except (ConnectionResetError, BrokenPipeError, RuntimeError) as e:
        raise anyio.BrokenResourceError from e


def _framed(m: SessionMessage | bytes, server: StdioServerParameters) -> bytes:
    """One line of the upstream's stdin: the SDK's message serialised, or a fast-lane line
    already framed (UTF-8: the lane exists only for UTF-8 servers)."""
    if isinstance(m, bytes):
        return m
    text = m.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
    return text.encode(server.encoding, errors=server.encoding_error_handler)


@contextlib.asynccontextmanager
async def bounded_stdio_client(
    server: StdioServerParameters,
    *,
    max_message_bytes: int,
    errlog: TextIO,
    on_oversized: Callable[[str], None] | None = None,
    on_lane: Callable[[FastLane], None] | None = None,
    on_unreadable: Callable[[Unreadable], None] | None = None,
    name: str | None = None,
) -> AsyncIterator[tuple[Any, Any]]:
    """Like ``mcp.client.stdio.stdio_client``, with every incoming message bounded.

    With ``on_lane``, it is given this connection's ``FastLane`` (``gateway.upstream.fastcall``):
    requests sent through it share the stdin writer (pre-framed lines) and its responses are
    taken off the stdout reader before the SDK's session sees them. ``name`` (the upstream's,
    default its command) is what the log lines call it."""
    command = await executable_command(server.command)
    process = await start_stdio_process(
        command=command,
        args=server.args,
        env=get_default_environment() | (server.env or {}),
        errlog=errlog,
        cwd=server.cwd,
    )
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage | bytes](0)
    writer_done = anyio.Event()
    lane: FastLane | None = None
    stdin = process_stdin_writer(process.stdin)
    buf = bytearray()  # stdout_reader's unfinished line

    async def send_line(line: bytes) -> None:
        await write_or_queue(line, stdin, write_reader, write_stream.send)

    if on_lane is not None and codecs.lookup(server.encoding).name == "utf-8":  # orjson writes UTF-8
        lane = FastLane(send_line)
        on_lane(lane)
        # responses settle their call in the stdout pipe's read callback
        tap_process_stdout(process, lane.take_now, max_line=max_message_bytes, idle=lambda: not buf)

    async with anyio.create_task_group() as tg:
        limits = _Limits(name or server.command, max_message_bytes, on_oversized, on_unreadable)
        tg.start_soon(_read_stdout, process, server, buf, lane, read_writer, send_line, limits)
        tg.start_soon(_write_stdin, process, server, write_reader, read_writer, writer_done)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                read_stream.close()
                write_stream.close()
                with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT):
                    await writer_done.wait()
                await stop_stdio_process(process)
                for s in (read_stream, write_stream, read_writer, write_reader):
                    with contextlib.suppress(Exception):
                        await s.aclose()
            tg.cancel_scope.cancel()


class _Limits(NamedTuple):
    """What the stdout reader refuses, and whom it tells."""

    name: str  # the upstream's, for the log
    max_message_bytes: int
    on_oversized: Callable[[str], None] | None
    on_unreadable: Callable[[Unreadable], None] | None


async def _read_stdout(
    process: Any,
    server: StdioServerParameters,
    buf: bytearray,
    lane: FastLane | None,
    read_writer: MemoryObjectSendStream[SessionMessage | Exception],
    send_line: Callable[[bytes], Awaitable[None]],
    limits: _Limits,
) -> None:
    """The upstream's stdout to the session: bounded lines (``split_lines``), fast-lane
    responses taken off first, a message the SDK cannot parse for its text answered at once
    (``_unreadable``). Its own task so the connection's setup stays readable; the loop
    keeps everything in locals (no per-message attribute or call overhead)."""
    assert process.stdout is not None
    scan_from = 0
    try:
        async with read_writer:
            try:
                while True:
                    try:
                        chunk = await process.stdout.receive(_READ_CHUNK)
                    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        return
                    try:
                        lines, scan_from = split_lines(buf, chunk, scan_from, limits.max_message_bytes)
                    except MessageTooLarge as e:
                        _logger.error("upstream %s sent %s: closing the connection", limits.name, e)
                        if limits.on_oversized is not None:
                            limits.on_oversized(str(e))
                        return  # closing the read stream ends the session; the supervisor restarts it
                    for line in lines:
                        if lane is not None and await lane.take(line):
                            continue
                        text = line.decode(server.encoding, errors=server.encoding_error_handler)
                        msg: SessionMessage | Exception | None = parse_stdio_line(text)
                        if isinstance(msg, Exception):
                            msg = await _unreadable(text, msg, lane, send_line, limits)
                        if msg is not None:
                            await read_writer.send(msg)
            finally:
                buf.clear()
                if lane is not None:
                    lane.close()
                # The session sees the end now: the drain below lasts until the process is
                # stopped, which waits for the session to end (an oversized message used to
                # leave the call pending until its timeout and a failed ping).
                read_writer.close()
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await drain_stdout(process)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError):
        pass


async def _unreadable(
    text: str,
    failed: Exception,
    lane: FastLane | None,
    send_line: Callable[[bytes], Awaitable[None]],
    limits: _Limits,
) -> SessionMessage | Exception | None:
    """A line the SDK could not parse: when its text is not valid UTF-8, an answer becomes an
    error answer for its call (through the fast lane, or to the session), a request of the
    upstream's gets an error answer on its stdin, a notification is dropped; else the SDK's
    parse failure goes to the session as before, with one log line (not the SDK's traceback).
    What the session gets, None for nothing."""
    found = unreadable(text)
    if found is None:  # valid text, not a JSON-RPC message: a banner or debug output, say
        _logger.warning("upstream %s wrote a line that is not a JSON-RPC message: %.120r", limits.name, text)
        return failed
    if limits.on_unreadable is not None:
        limits.on_unreadable(found)
    if found.reply is None:
        return None
    line = orjson.dumps(found.reply)
    if found.kind == "request":
        await send_line(line + b"\n")
        return None
    if lane is not None and await lane.take(line):
        return None
    return error_message(found.reply)


async def _write_stdin(
    process: Any,
    server: StdioServerParameters,
    write_reader: MemoryObjectReceiveStream[SessionMessage | bytes],
    read_writer: MemoryObjectSendStream[SessionMessage | Exception],
    writer_done: anyio.Event,
) -> None:
    """The session's messages (and fast-lane lines) to the upstream's stdin, those already
    waiting coalesced into one pipe write (``with_waiting``). A broken pipe ends the read side
    too, so the session sees the end; ``writer_done`` lets the close wait for the last flush."""
    assert process.stdin is not None
    try:
        async with write_reader:
            async for message in write_reader:
                await process.stdin.send(
                    b"".join(_framed(m, server) for m in with_waiting(message, write_reader))
                )
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await read_writer.aclose()
    finally:
        writer_done.set()
