"""The bridge between the protocol eras for a server's questions to the user's client.

A 2026-07-28 server asks for input (elicitation, sampling, roots) by answering a call with an
``InputRequiredResult``; a 2025-era server sends a server→client request during the call. A
client of the other era cannot use what it gets, so the gateway translates:

- 2026 upstream, 2025 client (``ask_legacy_client``): each embedded input request is sent to
  the calling client as the 2025 request (related to its call, so it goes to that client and
  no other), and the gateway retries the call with the answers (the multi-round-trip loop).
- 2025 upstream, 2026 client (``PendingQuestions``): the upstream's request becomes an
  ``InputRequiredResult`` whose ``request_state`` names the upstream call, still running and
  waiting for its answer; the client's retry (same principal only) delivers the answer and
  waits for the call's result or its next question.

Every question bridged is audited (``bridge.input_request``: the kind, never the content).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
from mcp import types
from mcp.shared.message import ServerMessageMetadata

from gateway.errors import PolicyDenied, UpstreamError

# A cap on rounds: a server that keeps asking is cut off (the 2026 SDK client does the same).
MAX_ROUNDS = 8

_RESULT_TYPES: dict[str, type] = {
    "elicitation/create": types.ElicitResult,
    "sampling/createMessage": types.CreateMessageResult,
    "roots/list": types.ListRootsResult,
}


async def ask_legacy_client(
    session: Any, request_id: Any, result: types.InputRequiredResult
) -> dict[str, Any]:
    """Put a 2026 server's input requests to a 2025-era client; its answers, by the server's keys."""
    answers: dict[str, Any] = {}
    meta = ServerMessageMetadata(related_request_id=request_id) if request_id is not None else None
    for key, request in (result.input_requests or {}).items():
        result_type = _RESULT_TYPES.get(request.method)
        if result_type is None:  # pragma: no cover - the union has exactly these three
            raise UpstreamError(f"the upstream asked for {request.method!r}, which cannot be bridged")
        try:
            answers[key] = await session.send_request(request, result_type, metadata=meta)
        except Exception as e:  # noqa: BLE001 - the caller sees why its call could not go on
            raise UpstreamError(
                f"the client did not answer the upstream's {request.method} ({type(e).__name__}: {e})"
            ) from None
    return answers


@dataclass(eq=False)
class _Pending:
    """One upstream call of a 2026 client, running while the upstream waits for an answer."""

    principal: str
    target: str
    questions: anyio.abc.ObjectReceiveStream[tuple[Any, anyio.Event, list[Any]]]
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: list[Any] = field(default_factory=list)  # [result] or [exception]
    waiting: dict[str, tuple[anyio.Event, list[Any]]] = field(default_factory=dict)
    expires: float = 0.0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class PendingQuestions:
    """2025-era upstream calls made for 2026-era clients, keyed by the ``request_state`` the
    client echoes; bounded in number and time."""

    def __init__(self, *, max_pending: int = 256, answer_timeout_s: float = 300.0) -> None:
        self._pending: dict[str, _Pending] = {}
        self._max = max_pending
        self._timeout = answer_timeout_s

    def __len__(self) -> int:
        return len(self._pending)

    def __bool__(self) -> bool:
        return True

    def owns(self, request_state: str | None) -> bool:
        return request_state is not None and request_state in self._pending

    def _sweep(self) -> None:
        now = anyio.current_time()
        for state in [s for s, p in self._pending.items() if p.expires < now]:
            del self._pending[state]  # unanswered: its upstream call got an error meanwhile

    async def start(
        self,
        tg: anyio.abc.TaskGroup,
        principal: str,
        target: str,
        run: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]],
    ) -> Any:
        """Run ``run(ask)`` (the upstream call; ``ask`` is what its relay calls with each
        server→client request) and return its result, or an ``InputRequiredResult`` for
        the first question it asks."""
        self._sweep()
        if len(self._pending) >= self._max:
            raise UpstreamError("too many calls waiting for answers; try again later")
        send, recv = anyio.create_memory_object_stream[tuple[Any, anyio.Event, list[Any]]](8)
        pending = _Pending(principal, target, recv)

        async def ask(request: Any) -> Any:
            answered, box = anyio.Event(), list[Any]()
            await send.send((request, answered, box))
            with anyio.fail_after(self._timeout):
                await answered.wait()
            return box[0]

        async def body() -> None:
            try:
                with pending.scope:
                    pending.outcome.append(await run(ask))
            except Exception as e:  # noqa: BLE001 - handed to whoever waits for the call
                pending.outcome.append(e)
            finally:
                if not pending.outcome:
                    pending.outcome.append(UpstreamError("the call was cancelled"))
                pending.done.set()
                send.close()

        tg.start_soon(body)
        return await self._next(pending)

    async def resume(
        self, principal: str, target: str, request_state: str, answers: dict[str, Any] | None
    ) -> Any:
        """A 2026 client's retry: deliver its answers, then the call's result or next question."""
        self._sweep()
        pending = self._pending.get(request_state)
        if pending is None:
            raise UpstreamError("no call is waiting for this request_state (it expired or was answered)")
        if pending.principal != principal or pending.target != target:
            # another principal's (or another tool's) call: not yours to answer
            raise PolicyDenied("this request_state belongs to another call")
        del self._pending[request_state]
        for key, (answered, box) in pending.waiting.items():
            answer = (answers or {}).get(key)
            box.append(
                answer
                if answer is not None
                else types.ErrorData(code=types.INVALID_PARAMS, message="no answer")
            )
            answered.set()
        pending.waiting.clear()
        return await self._next(pending)

    async def _next(self, pending: _Pending) -> Any:
        """Wait for the call's result or its next question (as an InputRequiredResult); the
        client giving up (cancelled, timed out) cancels the upstream call."""
        try:
            return await self._wait(pending)
        except BaseException:
            pending.scope.cancel()
            raise

    async def _wait(self, pending: _Pending) -> Any:
        # no deadline here: the upstream call has its own (servers.X.timeout_s), and a
        # question left unanswered times out in `ask`
        got: list[tuple[Any, anyio.Event, list[Any]]] = []
        async with anyio.create_task_group() as tg:

            async def question() -> None:
                try:
                    got.append(await pending.questions.receive())
                except anyio.EndOfStream:
                    await pending.done.wait()
                tg.cancel_scope.cancel()

            async def finished() -> None:
                await pending.done.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(question)
            tg.start_soon(finished)
        if got:
            request, answered, box = got[0]
            key = f"q{len(pending.waiting) + 1}"
            pending.waiting[key] = (answered, box)
            state = secrets.token_urlsafe(24)
            pending.expires = anyio.current_time() + self._timeout
            self._pending[state] = pending
            return types.InputRequiredResult(input_requests={key: request}, request_state=state)
        outcome = pending.outcome[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
