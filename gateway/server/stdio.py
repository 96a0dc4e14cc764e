"""``symbi mcp``: serve the gateway over stdio (what Claude Desktop launches).

Our own stdio transport, on the event loop's pipe support instead of a worker thread per
read and write (the SDK's ``stdio_server`` hops threads three times per message; this is
the gateway's hot path). Like the SDK's, it moves the protocol off fds 0 and 1 while serving
(fd 0 reads /dev/null, fd 1 goes to stderr), so nothing else in the process or its children
can corrupt the stream. And it answers bad input instead of dropping it: a line that is not
JSON gets -32700, JSON that is not JSON-RPC -32600 (a batch too: one message per line, and its
refusal has no id), a message over ``mcp.max_message_bytes``
-32600 naming the limit (with the request's id when it can be read), a request whose id is
still in flight in the session -32600 with that id (``OpenRequests``). The session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import stat
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, NamedTuple

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp import types
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.jsonrpc_dispatcher import cancelled_request_id_from_params, progress_token_from_params
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp.types import ProgressToken
from pydantic import ValidationError

from gateway.assemble import make_gateway
from gateway.compat import create_context_streams, stream_reader_head, tap_lines
from gateway.config.model import Config
from gateway.errors import ConfigError, TooManyConnections
from gateway.server.fastlane import LaneDispatch, StdioLane
from gateway.server.front import build_server, init_options
from gateway.upstream.stdio import with_waiting, write_or_queue

_ID_RE = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")')


def _error(code: int, message: str, rid: Any = None, data: Any = None) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCError(
            jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message, data=data)
        )
    )


TOO_MANY = -32000  # a server error, as the HTTP front's answer beyond the same limit
SILENCED_MAX = 1024  # cancelled requests' progress tokens kept (a progress of an older one may pass)


class Queued(NamedTuple):
    """A fast-lane reply waiting behind the write loop, with its call: dropped there if the
    client cancels the call meanwhile (``OpenRequests.answered``)."""

    line: bytes
    call: LaneDispatch


def frame(msg: SessionMessage | Queued | bytes) -> bytes:
    """One message as one line of the wire (the fast lane's replies come framed)."""
    if isinstance(msg, bytes):
        return msg
    if isinstance(msg, Queued):
        return msg.line
    return msg.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n"


def _peek_id(head: bytes) -> Any:
    """The id of the request a refused line carries, when it can be read. None for a batch:
    its refusal is the whole batch's, not its first element's (whose id may be a request in
    flight, which the refusal would then seem to answer)."""
    if head.lstrip()[:1] == b"[":
        return None
    m = _ID_RE.search(head)
    if not m:
        return None
    raw = m.group(1)
    return int(raw) if raw[:1] != b'"' else raw[1:-1].decode("utf-8", "replace")


def _parse(line: bytes) -> tuple[SessionMessage, bool]:
    """(message, True) for the server, or (error reply, False) for the client."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False)), True
    except ValidationError as e:
        errs = e.errors()
        if errs and errs[0].get("type") == "json_invalid":
            return _error(types.PARSE_ERROR, f"parse error: {errs[0].get('msg')}"), False
        if line.lstrip()[:1] == b"[":  # the SDK serves one message at a time
            return _error(
                types.INVALID_REQUEST, "JSON-RPC batches are not supported: one message per line"
            ), False
        return _error(types.INVALID_REQUEST, "invalid JSON-RPC message", _peek_id(line[:512])), False


class OpenRequests:
    """The ids of the client's requests in flight on one connection, whichever path serves
    them. MCP forbids a requestor to reuse an id within a session; a reused id still in flight
    would let one reply answer the other request (the SDK's dispatcher overwrites its entry for
    the id and answers both, under one id). So a request whose id is in flight is refused with
    Invalid Request (its id echoed) and the first goes on undisturbed. The lane's calls are its
    own (``StdioLane.serving``); a request for the SDK is held here (``sdk``: id -> cancelled)
    from the line that carries it until it has settled: its reply is on its way out
    (``answered``) or the SDK's dispatcher says it ended with none (the message's
    ``on_request_unanswered``). A cancel does not free the id: a reply the SDK made before it
    saw the cancel may still be on its way, and would answer a reuse of the id. That reply is
    dropped instead (MCP: no response to a cancelled request), and the id freed then.

    Its progress too: a cancelled request's progress token is ``silenced`` (a notification of
    it still waiting for the writer is dropped: MCP's progress references only operations in
    progress), until a new request of that token comes (the lane's calls: ``StdioLane``)."""

    def __init__(self, lane: StdioLane | None, limit: int | None = None) -> None:
        self.sdk: dict[types.RequestId, bool] = {}
        self._limit = limit  # requests in flight at once, both paths (mcp.max_concurrent_connections)
        self._tokens: dict[types.RequestId, ProgressToken] = {}  # of SDK requests that have one
        self.silenced: dict[ProgressToken, None] = {}  # an ordered set, the newest SILENCED_MAX
        self._lane = lane

    def admit(self, msg: SessionMessage) -> tuple[SessionMessage, bool]:
        """(the message for the SDK, True), a request's id now held; or (the refusal, False)."""
        message = msg.message
        if isinstance(message, types.JSONRPCRequest):
            key = coerce_request_id(message.id)
            if key in self.sdk or (self._lane is not None and self._lane.serving(key)):
                return _error(
                    types.INVALID_REQUEST,
                    f"request id {message.id!r} is already in flight in this session "
                    "(a request id must not be reused)",
                    message.id,
                ), False
            if (
                self._limit is not None
                and len(self.sdk) + (self._lane.in_flight if self._lane else 0) >= self._limit
            ):
                # its refusal waits for the client to read (the read loop writes it): a client that
                # sends and never reads stops being read, instead of a task and a reply per line
                return _error(
                    TOO_MANY,
                    f"{self._limit} requests are in flight in this session "
                    "(mcp.max_concurrent_connections); retry once some are answered",
                    message.id,
                    {"code": TooManyConnections.code},  # as the HTTP front's answer says it
                ), False
            self.sdk[key] = False
            if (token := progress_token_from_params(message.params)) is not None:
                self._tokens[key] = token
                self.silenced.pop(token, None)  # a new operation of that token: its progress goes
            settled = ServerMessageMetadata(on_request_unanswered=partial(self._unanswered, key))
            return SessionMessage(message, metadata=settled), True
        if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            rid = cancelled_request_id_from_params(message.params)
            if rid is not None and (key := coerce_request_id(rid)) in self.sdk:
                self.sdk[key] = True  # held until settled; a reply not yet written is dropped
                self._silence(self._tokens.get(key))
            elif rid is not None and self._lane is not None:
                self._silence(self._lane.progress_token(coerce_request_id(rid)))
        return msg, True

    def _silence(self, token: ProgressToken | None) -> None:
        if token is not None:
            self.silenced[token] = None
            if len(self.silenced) > SILENCED_MAX:
                del self.silenced[next(iter(self.silenced))]

    async def _unanswered(self, key: types.RequestId) -> None:
        # the SDK's dispatcher: the request ended with no reply (cancelled), none will follow
        self.sdk.pop(key, None)
        self._tokens.pop(key, None)

    def answered(self, msg: SessionMessage | Queued) -> bool:
        """A reply is on its way out: an SDK request's id is free again (a lane call's, when
        its task sees the write done). False: the client cancelled that request before its
        reply left, drop it."""
        if isinstance(msg, Queued):
            return not msg.call.cancelled
        message = msg.message
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
            key = coerce_request_id(message.id)
            self._tokens.pop(key, None)
            return not self.sdk.pop(key, False)
        if self.silenced and isinstance(message, types.JSONRPCNotification):
            return not (
                message.method == "notifications/progress"
                and (message.params or {}).get("progressToken") in self.silenced
            )
        return True


@contextlib.asynccontextmanager
async def stdio_transport(
    max_bytes: int, lane: StdioLane | None = None, max_in_flight: int | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """The client's stdin and stdout as the server's (read, write) streams, fds 0/1 taken over."""
    wire_in, wire_out = _take_wire()
    reader = asyncio.StreamReader(limit=max_bytes + 2)
    if lane is not None:
        # a lane call starts in the callback that reads its line, not a loop turn later in read_loop
        tap_lines(reader, lane.offer_now, max_line=max_bytes + 2)
    rtransport, writer = await _connect_wire(wire_in, wire_out, reader)

    to_server, from_client = create_context_streams[SessionMessage | Exception](0)
    # outgoing: a plain memory stream (the writer needs no sender context) so that replies
    # waiting together leave in one pipe write (``receive_nowait``)
    to_client, from_server = anyio.create_memory_object_stream[SessionMessage | Queued](0)
    lane_out = to_client.clone()  # the fast lane's replies, in the same writer
    requests = OpenRequests(lane, max_in_flight)

    pipe, high = _write_limit(writer)

    async def lane_write(msg: SessionMessage | bytes, call: LaneDispatch) -> None:
        """A fast-lane reply: written now when the write loop holds nothing and the client keeps
        up, else queued behind (where a cancel of its call read meanwhile still drops it)."""
        line = frame(msg)
        if pipe is not None and pipe.get_write_buffer_size() >= high:  # the client is behind
            await lane_out.send(Queued(line, call))
            return
        await write_or_queue(line, writer, from_server, lambda line: lane_out.send(Queued(line, call)))

    try:
        async with anyio.create_task_group() as tg:
            if rtransport is None:  # a file or /dev/null: read in a thread
                tg.start_soon(feed_from_file, wire_in, reader)
            tg.start_soon(_read_loop, reader, to_server, writer, lane, max_bytes, requests)
            tg.start_soon(_write_loop, writer, from_server, requests)
            if lane is not None:
                lane.attach(tg, lane_write, requests.sdk, requests.silenced, max_in_flight)
            try:
                yield from_client, to_client
            finally:
                lane_out.close()
                tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            writer.close()
        if rtransport is not None:
            rtransport.close()
        else:
            os.close(wire_in)


def _write_limit(writer: asyncio.StreamWriter | FileWriter) -> tuple[asyncio.WriteTransport | None, int]:
    """The pipe's transport and its buffer's high-water mark (None: a file, never behind). Once
    the buffer holds that much (the client reads slower than we write), a lane reply waits
    behind the write loop like the SDK's replies, not in the buffer, where a cancel could no
    longer take it back: the buffer stays bounded."""
    if not isinstance(writer, asyncio.StreamWriter):
        return None, 0
    transport = writer.transport
    return transport, transport.get_write_buffer_limits()[1]


def _take_wire() -> tuple[int, int]:
    """Private copies of fds 0 and 1 (the wire); fds 0/1 then point elsewhere (0 reads
    /dev/null, 1 goes to stderr) for the rest of the process, so nothing else can corrupt it."""
    wire_in, wire_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return wire_in, wire_out


async def _connect_wire(
    wire_in: int, wire_out: int, reader: asyncio.StreamReader
) -> tuple[asyncio.ReadTransport | None, asyncio.StreamWriter | FileWriter]:
    """The wire on the event loop's pipe support where the loop can watch it (``pollable``);
    a read transport of None means ``feed_from_file`` must feed ``reader`` from a thread."""
    loop = asyncio.get_running_loop()
    rtransport: asyncio.ReadTransport | None = None
    if pollable(wire_in):
        rtransport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
        )
    writer: asyncio.StreamWriter | FileWriter = FileWriter(wire_out)
    if pollable(wire_out):
        wtransport, wprotocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
        )
        writer = asyncio.StreamWriter(wtransport, wprotocol, None, loop)
    return rtransport, writer


async def _read_loop(
    reader: asyncio.StreamReader,
    to_server: Any,  # compat.create_context_streams' sender (its type is SDK-private)
    writer: asyncio.StreamWriter | FileWriter,
    lane: StdioLane | None,
    max_bytes: int,
    requests: OpenRequests,
) -> None:
    """Client lines to the server (or the fast lane); bad input answered on the wire, not dropped
    (a reused id in flight too: ``requests``). A task of its own, all state in locals: no
    per-message lookups beyond the closure's."""

    async def write(msg: SessionMessage | bytes) -> None:
        writer.write(frame(msg))
        await writer.drain()

    async def _deliver(line: bytes) -> None:
        if lane is not None and lane.offer(line):
            return
        msg, for_server = _parse(line)
        if for_server:
            msg, for_server = requests.admit(msg)
        if for_server:
            await to_server.send(msg)
            return
        await write(msg)

    async with to_server:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():
                    await _deliver(e.partial)
                if lane is not None:
                    await lane.shutdown()
                return
            except asyncio.LimitOverrunError as e:
                head = stream_reader_head(reader, 512)
                total = await _drain_line(reader, e.consumed)
                await write(
                    _error(
                        types.INVALID_REQUEST,
                        f"message of {total} bytes exceeds the gateway's limit of {max_bytes} bytes "
                        "(mcp.max_message_bytes)",
                        _peek_id(head),
                    )
                )
                continue
            if line.strip():
                await _deliver(line)


async def _write_loop(
    writer: asyncio.StreamWriter | FileWriter,
    from_server: MemoryObjectReceiveStream[Any],
    requests: OpenRequests,
) -> None:
    """Server messages (and queued fast-lane replies) to the client, those already waiting in one
    write; each reply frees its request's id (``requests``) before it leaves, or is dropped when
    the client cancelled its request before."""
    async with from_server:
        async for msg in from_server:
            out = [m for m in with_waiting(msg, from_server) if requests.answered(m)]
            if out:
                writer.write(b"".join(map(frame, out)))
                await writer.drain()


def pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd``: a pipe, socket or terminal can; a regular file
    (``symbi mcp < requests.jsonl``) or ``/dev/null`` cannot (epoll refuses them)."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return False
    with select.epoll() as ep:
        try:
            ep.register(fd, select.EPOLLIN | select.EPOLLOUT)
        except OSError:
            return False
    return True


async def feed_from_file(fd: int, reader: asyncio.StreamReader) -> None:
    """Read a stdin the loop cannot watch in a worker thread, into ``reader``, until EOF."""
    while True:
        chunk = await anyio.to_thread.run_sync(os.read, fd, 1 << 16, abandon_on_cancel=True)
        if not chunk:
            reader.feed_eof()
            return
        reader.feed_data(chunk)


class FileWriter:
    """A stdout the loop cannot watch (a file, ``/dev/null``): written directly, which does
    not block for long on those."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        os.close(self._fd)


async def _drain_line(reader: asyncio.StreamReader, consumed: int) -> int:
    """Skip the rest of an oversized line; returns its size."""
    total = 0
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
            return total + len(chunk)
        except asyncio.LimitOverrunError as e:
            n = max(e.consumed, 1)
            await reader.readexactly(n)
            total += n
        except asyncio.IncompleteReadError as e:
            return total + len(e.partial)


def check_stdio_config(config: Config) -> None:
    """Refuse what a stdio gateway cannot run, naming the key: hosted agents (``[agents.NAME]``,
    enabled) reach the gateway over the HTTP front's Unix socket with an API key made for each
    run, and ``symbi mcp`` has neither (it serves its one client). The gateway used to start and
    every run of such an agent failed ("invalid config"); an on-demand one could never be started.

    Raises:
        ConfigError: naming each enabled hosted agent (exit 2 from ``symbi mcp``).
    """
    hosted = [f"agents.{name}" for name, ac in config.agents.items() if ac.enabled]
    if hosted:
        raise ConfigError(
            f"{', '.join(hosted)}: hosted agents run only under `symbi serve` (they reach the gateway "
            "over its Unix socket with a key of their own); for `symbi mcp` set enabled = false"
        )


async def serve_stdio(config: Config) -> None:
    check_stdio_config(config)  # before anything starts
    server = build_server(config, lambda listen: make_gateway(config, listen))
    lane = None
    if config.mcp.stdio_fast_lane:
        lane = StdioLane(server)
        server.middleware.append(lane.capture)
    async with stdio_transport(config.mcp.max_message_bytes, lane, config.mcp.max_concurrent_connections) as (
        read,
        write,
    ):
        await server.run(read, write, init_options(server))


def run_stdio(config: Config) -> None:
    anyio.run(serve_stdio, config)
