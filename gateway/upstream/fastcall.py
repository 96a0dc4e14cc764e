"""The fast lane of ``tools/call`` to a stdio upstream: framed and routed here with orjson.

The SDK's client path builds and validates pydantic models on every hop of a call (the request
model and its dump, the transport's ``JSONRPCMessage`` on the way out and the way back, a
dispatcher task, two memory streams). The lane writes the request's JSON line straight to the
upstream's stdin writer and takes its response off the stdout reader before the SDK sees it,
keyed by an id from a space of its own (the SDK's ids count up from 0; the lane's start at
``FIRST_ID``). Everything else (initialize, listings, server->client requests, notifications
that are not the lane's progress) stays on the SDK's path untouched.

What the SDK's ``send_request`` does to a call, the lane does too: the request id is the
progress token when the caller wants progress; the W3C trace context rides in ``_meta``; the
response-wait clock starts after the write; a timed-out or cancelled call sends
``notifications/cancelled``; an error response is an ``MCPError`` with the peer's code; a
closed connection fails every waiter with ``CONNECTION_CLOSED``. The result itself is checked
by ``gateway.upstream.session`` exactly as the SDK checks it (the same SDK functions).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from mcp import types
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from mcp_types.methods import SERVER_RESULTS
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter

from gateway.compat import clamp_inbound_ttl, later_revision_fields, parse_stdio_line
from gateway.deadlines import EarliestTimer
from gateway.telemetry import inject_trace

_logger = logging.getLogger("symbi.upstream.fastcall")

FIRST_ID = 1 << 40  # far above any id the SDK's counter reaches on one connection
ProgressFn = Callable[[float, float | None, str | None], Awaitable[None]]
Send = Callable[[bytes], Awaitable[None]]


class _Waiter:
    """One request's answer. A bare asyncio future, not an ``anyio.Event`` under
    ``anyio.fail_after``: the lane is this gateway's hot path and runs on asyncio only; anyio's
    cancellation (a cancelled scope cancels the task) reaches the ``await`` as usual."""

    __slots__ = ("deadline", "done", "on_progress", "outcome")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_progress: ProgressFn | None) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.outcome: dict[str, Any] | MCPError | None = None
        self.on_progress = on_progress
        self.deadline = math.inf  # loop time; set once the request is written

    def settle(self, outcome: dict[str, Any] | MCPError) -> None:
        self.outcome = outcome
        if not self.done.done():
            self.done.set_result(None)


def _expire(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_exception(TimeoutError())


class _Deadlines:
    """The response-wait clocks of one lane's waiters on ONE loop timer
    (``gateway.deadlines.EarliestTimer``): every waiter whose deadline has come fails with
    ``TimeoutError``, as ``call_later(timeout, _expire)`` would fail it."""

    __slots__ = ("_loop", "_pending", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, pending: dict[int, _Waiter]) -> None:
        self._loop = loop
        self._pending = pending
        self._timer = EarliestTimer(self._expire)

    def start(self, waiter: _Waiter, timeout: float) -> None:
        loop = self._loop
        waiter.deadline = deadline = loop.time() + timeout
        self._timer.include(loop, deadline)

    def _expire(self, due: float) -> float:
        following = math.inf
        for waiter in list(self._pending.values()):
            if waiter.deadline <= due:
                _expire(waiter.done)
            elif waiter.deadline < following:
                following = waiter.deadline
        return following

    def close(self) -> None:
        self._timer.cancel()


class FastLane:
    """Requests of one stdio connection sent and answered outside the SDK's session."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._ids = itertools.count(FIRST_ID)
        self._pending: dict[int, _Waiter] = {}
        # the connection's loop, for its whole life (its pipes are bound to it): looked up once,
        # not per call (asyncio.get_running_loop is a getpid system call on Python 3.11)
        self._loop = asyncio.get_running_loop()
        self._deadlines = _Deadlines(self._loop, self._pending)
        self._closed = False

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(
        self, method: str, params: dict[str, Any], *, timeout: float | None, on_progress: ProgressFn | None
    ) -> dict[str, Any] | None:
        """Send ``method`` and return the raw ``result`` object of its response; None (nothing
        sent) when orjson cannot write ``params`` (an integer beyond 64 bits...): the caller
        then takes the SDK's path, which can."""
        if self._closed:
            raise MCPError(code=CONNECTION_CLOSED, message="Connection closed")
        rid = next(self._ids)
        meta: dict[str, Any] = dict(params.get("_meta") or {})
        if on_progress is not None:
            meta["progressToken"] = rid  # as the SDK does: the request id is the progress token
        inject_trace(meta)  # W3C trace context, as the SDK's client does
        out = dict(params)
        if meta:
            out["_meta"] = meta
        try:
            line = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": out}) + b"\n"
        except orjson.JSONEncodeError:
            return None
        waiter = _Waiter(self._loop, on_progress)
        self._pending[rid] = waiter
        written = False
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()
            written = True  # a write interrupted by cancellation may still have been delivered
            try:
                await self._send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise MCPError(code=CONNECTION_CLOSED, message="Connection closed") from None
            if timeout is not None:  # the clock starts after the write, as the SDK's
                self._deadlines.start(waiter, timeout)
            await waiter.done
        except TimeoutError:
            await self._cancel(rid, f"timed out after {timeout}s", shield=False)
            raise MCPError(code=REQUEST_TIMEOUT, message=f"Request {method!r} timed out") from None
        except anyio.get_cancelled_exc_class():
            if written and waiter.outcome is None:
                await self._cancel(rid, "caller cancelled", shield=True)
            raise
        finally:
            self._pending.pop(rid, None)
        outcome = waiter.outcome
        if isinstance(outcome, MCPError):
            raise outcome
        assert outcome is not None
        return outcome

    async def _cancel(self, rid: int, reason: str, *, shield: bool) -> None:
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": rid, "reason": reason},
        }
        with anyio.CancelScope(shield=shield), anyio.move_on_after(2.0):
            try:
                await self._send(orjson.dumps(note) + b"\n")
            except Exception as e:  # noqa: BLE001 - a courtesy: the connection may be gone
                _logger.debug("courtesy cancel of %s not sent: %s", rid, e)

    async def take(self, line: bytes) -> bool:
        """Whether ``line`` (one message from the upstream) was the lane's: a response to one
        of its requests or progress on one. Anything else is left for the SDK's path."""
        msg = self._message(line)
        if msg is None:
            return False
        method = msg.get("method")
        if method is None:
            return self._settle(msg, line)
        if method == "notifications/progress":
            params = msg.get("params")
            if not isinstance(params, dict):
                return False
            waiter = self._pending.get(_key(params.get("progressToken")))
            if waiter is None:
                return False
            progress: Any = params.get("progress")
            total, message = params.get("total"), params.get("message")
            if waiter.on_progress is not None and _number(progress) and (total is None or _number(total)):
                try:
                    await waiter.on_progress(
                        float(progress), total, message if isinstance(message, str) else None
                    )
                except Exception:
                    _logger.debug("progress callback failed", exc_info=True)
            return True
        return False

    def take_now(self, line: bytes) -> bool:
        """``take`` of a response, from the stdout pipe's read callback (``gateway.compat.tap_lines``:
        ``line`` ends with its newline): the caller wakes a loop turn before the reader task would
        have. Anything else (progress, whose callback is awaited, requests, notifications) is
        declined and left, with what follows it, to the reader task."""
        msg = self._message(line)
        if msg is None or "method" in msg:
            return False
        return self._settle(msg, line[:-1])

    def _message(self, line: bytes) -> dict[str, Any] | None:
        """``line`` as a JSON-RPC message while the lane waits for any, else None (not the lane's)."""
        if not self._pending:
            return None
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return None
        return msg if isinstance(msg, dict) and msg.get("jsonrpc") == "2.0" else None

    def _settle(self, msg: dict[str, Any], line: bytes) -> bool:
        waiter = self._pending.get(_key(msg.get("id")))
        if waiter is None or waiter.outcome is not None:
            return False
        outcome = _outcome(msg, line)
        if outcome is None:
            return False  # not a response the SDK would accept either: it reports it as it would
        waiter.settle(outcome)
        return True

    def close(self) -> None:
        """The connection ended: every waiter fails with ``CONNECTION_CLOSED``."""
        self._closed = True
        self._deadlines.close()
        for waiter in self._pending.values():
            if waiter.outcome is None:
                waiter.settle(MCPError(code=CONNECTION_CLOSED, message="Connection closed"))


CALL_TOOL_RESULT: TypeAdapter[types.CallToolResult | types.InputRequiredResult] = TypeAdapter(
    types.CallToolResult | types.InputRequiredResult
)


@functools.cache
def _result_surface(version: str) -> TypeAdapter[Any] | None:
    """The ``tools/call`` result model of ``version``'s surface (``SERVER_RESULTS``, what
    ``validate_server_result`` validates against); None when that version has none (its
    ``KeyError``); an unknown version raises its ``ValueError``."""
    if version not in KNOWN_PROTOCOL_VERSIONS:
        raise ValueError(f"version must be a known protocol version, got {version!r}")
    target = SERVER_RESULTS.get(("tools/call", version))
    return None if target is None else TypeAdapter[Any](target)  # type: ignore[arg-type]


def tool_result(raw: dict[str, Any], version: str | None) -> types.CallToolResult | types.InputRequiredResult:
    """A raw ``tools/call`` result checked as ``ClientSession.send_request`` checks it, in its
    order: ``ttlMs`` floored, the negotiated version's result surface, later revisions' keys
    dropped, then the typed result (a refusal raises the same ``ValidationError``).

    The surface check is ``validate_server_result``'s validation without its dump, whose
    output that function discards: ``raw`` is parsed JSON, which the validated model dumps
    back without error, so only the validation can refuse it."""
    version = version or "2025-11-25"  # the SDK's fallback before a handshake
    clamp_inbound_ttl(raw)
    surface = _result_surface(version)
    if surface is not None:
        surface.validate_python(raw, by_name=False)
    foreign = later_revision_fields("tools/call", version)
    if not foreign.isdisjoint(raw):
        raw = {key: value for key, value in raw.items() if key not in foreign}
    return CALL_TOOL_RESULT.validate_python(raw, by_name=False)


def _outcome(msg: dict[str, Any], line: bytes) -> dict[str, Any] | MCPError | None:
    """A response's result or error. The plain shapes are read here; anything else (both keys,
    a null, extra members...) is classified by the SDK's own parser, so the lane settles a call
    exactly when and how the SDK's dispatcher would."""
    keys = msg.keys() - {"jsonrpc", "id"}
    if keys == {"result"} and isinstance(msg["result"], dict):
        return msg["result"]
    error = msg.get("error")
    if (
        keys == {"error"}
        and isinstance(error, dict)
        and error.keys() <= {"code", "message", "data"}
        and isinstance(error.get("code"), int)
        and not isinstance(error.get("code"), bool)
        and isinstance(error.get("message"), str)
    ):
        return MCPError(code=error["code"], message=error["message"], data=error.get("data"))
    parsed = parse_stdio_line(line.decode("utf-8", errors="strict"))
    if isinstance(parsed, SessionMessage):
        m = parsed.message
        if isinstance(m, types.JSONRPCResponse):
            return m.result
        if isinstance(m, types.JSONRPCError):
            return MCPError(code=m.error.code, message=m.error.message, data=m.error.data)
    return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _key(rid: Any) -> int:
    """The lane's id in a response (the SDK also matches ``"7"`` to 7); -1 (no lane id) else."""
    if isinstance(rid, int) and not isinstance(rid, bool):
        return rid
    if isinstance(rid, str) and rid.isdigit():
        return int(rid)
    return -1
