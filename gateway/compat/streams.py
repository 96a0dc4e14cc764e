"""Reach-ins into asyncio's and anyio's streams and pipes (the stdio fast lanes' line taps)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import anyio

from gateway.errors import SdkChanged

_logger = logging.getLogger("symbi.compat")


def stream_reader_head(reader: asyncio.StreamReader, n: int) -> bytes:
    """The first ``n`` buffered bytes of ``reader`` without consuming them.

    After ``LimitOverrunError`` the oversized line is still buffered; its head holds the
    JSON-RPC id the error reply needs (``StreamReader._buffer``).
    """
    try:
        buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    except AttributeError:
        raise SdkChanged("asyncio.StreamReader._buffer") from None
    return bytes(buffer[:n])


def _consumer_waits(reader: asyncio.StreamReader, idle: Callable[[], bool] | None) -> bool:
    """Whether ``reader``'s consumer waits for data with nothing unread (``_waiter``, ``_buffer``)
    and, by ``idle``, holds no unfinished line of its own."""
    waiter = reader._waiter  # type: ignore[attr-defined]
    return (
        waiter is not None
        and not waiter.done()
        and not reader._buffer  # type: ignore[attr-defined]
        and not reader._eof  # type: ignore[attr-defined]
        and (idle is None or idle())
    )


def _peel(data: bytes, take: Callable[[bytes], bool], max_line: int) -> int:
    """Hand the whole lines at the front of ``data`` to ``take`` until it declines one; where
    what is left starts."""
    start = 0
    end = data.find(b"\n")
    while end != -1 and end - start <= max_line:
        try:
            taken = take(data[start : end + 1])
        except Exception:  # never into the transport's callback: the consumer gets the line
            _logger.exception("a line tap failed; the line goes to its reader")
            taken = False
        if not taken:
            break
        start = end + 1
        end = data.find(b"\n", start)
    return start


def tap_lines(
    reader: asyncio.StreamReader,
    take: Callable[[bytes], bool],
    *,
    max_line: int,
    idle: Callable[[], bool] | None = None,
) -> bool:
    """Hand whole lines to ``take`` as they arrive, in the protocol's ``data_received``, while
    ``reader``'s consumer waits for data with nothing unread (``StreamReader._waiter``,
    ``_buffer``; ``idle``: the consumer holds no unfinished line of its own either).

    A stdio fast lane uses it to act on a line in the callback that receives it instead of
    one event-loop turn later in the reading task. Lines (with their ``\\n``, found at most
    ``max_line`` bytes in, as ``readuntil``'s limit) go to ``take`` in order until it declines
    one: that line and everything after it are fed as usual, so the consumer still sees all it
    is not spared, in order. False (nothing installed) when asyncio's reader no longer looks as
    expected."""
    if not all(hasattr(reader, a) for a in ("_waiter", "_buffer", "_eof")):
        return False
    feed = reader.feed_data

    def feed_data(data: bytes) -> None:
        if data and _consumer_waits(reader, idle):
            start = _peel(data, take, max_line)
            if start:
                data = data[start:]
                if not data:
                    return  # all taken: the consumer is not woken
        feed(data)

    reader.feed_data = feed_data  # type: ignore[method-assign,assignment]
    return True


def tap_process_stdout(
    process: Any, take: Callable[[bytes], bool], *, max_line: int, idle: Callable[[], bool] | None = None
) -> bool:
    """``tap_lines`` on an anyio process's stdout, one step earlier: in the pipe transport's
    ``data_received`` (``Process._process._transport``'s pipe 1), where asyncio's subprocess
    transport would otherwise hand each chunk to the stream a loop turn later (``call_soon``).
    Lines are taken there only while no chunk is on its way to the stream (counted here), so
    the order holds. Falls back to ``tap_lines`` on the stream; False when neither fits."""
    reader = process_stdout_reader(getattr(process, "stdout", None))
    if reader is None or not all(hasattr(reader, a) for a in ("_waiter", "_buffer", "_eof")):
        return False
    try:
        pipe = process._process._transport.get_pipe_transport(1)
        protocol = pipe.get_protocol()
        forward = protocol.data_received
    except AttributeError:
        return tap_lines(reader, take, max_line=max_line, idle=idle)
    feed = reader.feed_data
    on_the_way = [0]  # chunks handed to the transport's call_soon, not yet fed to the stream

    def data_received(data: bytes) -> None:
        if data and not on_the_way[0] and _consumer_waits(reader, idle):
            start = _peel(data, take, max_line)
            if start:
                data = data[start:]
                if not data:
                    return
        on_the_way[0] += 1
        forward(data)

    def feed_data(data: bytes) -> None:
        if on_the_way[0]:
            on_the_way[0] -= 1
        feed(data)

    protocol.data_received = data_received
    reader.feed_data = feed_data  # type: ignore[method-assign,assignment]
    return True


def process_stdin_writer(stdin: Any) -> asyncio.StreamWriter | None:
    """The asyncio ``StreamWriter`` under an anyio process's stdin (``StreamWriterWrapper._stream``),
    or None when anyio no longer has one there: the upstream fast lane writes a call's line into
    the pipe with it when the writer task holds nothing (no task hop, no checkpoints), and uses the
    writer task when None."""
    writer = getattr(stdin, "_stream", None)
    return writer if isinstance(writer, asyncio.StreamWriter) else None


def process_stdout_reader(stdout: Any) -> asyncio.StreamReader | None:
    """The asyncio ``StreamReader`` under an anyio process's stdout (``StreamReaderWrapper._stream``),
    or None when anyio no longer has one there: the upstream fast lane taps its responses off it
    (``tap_lines``) and reads them in the reader task when None."""
    reader = getattr(stdout, "_stream", None)
    return reader if isinstance(reader, asyncio.StreamReader) else None


def receiver_waits_idle(reader: Any) -> bool:
    """Whether a task waits on ``reader`` (an anyio memory object receive stream) with nothing
    buffered or handed to it: ``statistics()`` without building the statistics object (its
    ``_state``; the stdio lanes ask on every line they write). The statistics when anyio
    has moved it."""
    state: Any = getattr(reader, "_state", None)
    try:
        return bool(state.waiting_receivers) and not state.buffer and not state.waiting_senders
    except AttributeError:
        stats = reader.statistics()
        return bool(
            stats.tasks_waiting_receive > 0
            and stats.current_buffer_used == 0
            and stats.tasks_waiting_send == 0
        )


def raw_socket(sock: Any) -> Any:
    """The socket under docker's ``attach_socket`` result (a ``SocketIO`` wrapping ``_sock``)."""
    return getattr(sock, "_sock", sock)


def asyncio_cancel_scope() -> anyio.CancelScope:
    """``anyio.CancelScope()`` where the running backend is asyncio (the HTTP front's, under
    uvicorn), made by that backend's own class: ``anyio.CancelScope()`` looks the backend up
    first (sniffio, the running loop) and then makes this very object."""
    if _AsyncioCancelScope is None:
        raise SdkChanged("anyio._backends._asyncio.CancelScope")
    return _AsyncioCancelScope()


try:
    from anyio._backends._asyncio import CancelScope as _AsyncioCancelScope
except ImportError:  # pragma: no cover - an anyio without it: asyncio_cancel_scope says so
    _AsyncioCancelScope = None  # type: ignore[assignment,misc]


def asyncio_time() -> float:
    """``anyio.current_time()`` on asyncio: the running loop's clock, which the asyncio
    backend's ``current_time`` and its cancel scopes' deadlines read, without the lookup."""
    return asyncio.get_running_loop().time()
