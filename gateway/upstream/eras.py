"""Calls across protocol eras: a 2026-07-28 upstream's input-required results answered by
a 2025-era client (asked through the SDK's requests), a 2025 upstream's requests turned into
input-required results for a 2026-era client (``gateway.upstream.bridge``), and the caller
an upstream's requests go back to. Every bridged request is on the record."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import anyio.abc
from mcp import types
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from gateway.context import CallContext, Principal
from gateway.errors import PolicyDenied, UpstreamError
from gateway.events import Event, EventSink
from gateway.handouts import HandedOut
from gateway.upstream.asked import Refusal, Requester, RequestGate
from gateway.upstream.bridge import MAX_ROUNDS, PendingQuestions, ask_legacy_client
from gateway.upstream.caller_caps import DOWNSTREAM_CAPABILITIES, downstream_ref
from gateway.upstream.relay import caller_owner
from gateway.upstream.session import Upstream

if TYPE_CHECKING:
    from gateway.context import Downstream

_logger = logging.getLogger("symbi.relay")


def modern(side: Any) -> bool:
    """Whether a downstream request context or an upstream session speaks 2026-07-28."""
    return getattr(side, "protocol_version", None) in MODERN_PROTOCOL_VERSIONS


class on_behalf_of:  # lower case: the context manager function it replaced, same call sites
    """Requests the upstream sends back (sampling, elicitation, roots) go to this caller (or,
    for a 2026-era caller, to the era bridge's ``ask``), and a 2026-era upstream sees this
    caller's capabilities. A class, not a generator: it is on every upstream call's path."""

    __slots__ = ("_ask", "_call", "_ctx", "_key", "_principal", "_token", "_up")

    def __init__(
        self,
        up: Upstream,
        ctx: Downstream | None,
        ask: Callable[[Any], Awaitable[Any]] | None = None,
        call: CallContext | None = None,
        principal: Principal | None = None,
    ) -> None:
        self._up, self._ctx, self._ask, self._call = up, ctx, ask, call
        self._principal = principal  # the caller of a request that is no call (``_Caller``)

    def __enter__(self) -> None:
        ctx = self._ctx
        session = ctx.session if ctx is not None else None
        self._token = DOWNSTREAM_CAPABILITIES.set(downstream_ref(session))
        try:
            request_id = ctx.request_id if ctx is not None else None
            # a tool call's result conditions: the upstream's log lines during it are its words too
            decision = self._call.decision if self._call is not None else None
            conditions = decision.conditions if decision is not None else None
            self._key = self._up.relay.enter(
                session,
                request_id,
                caller_owner(ctx),
                ask=self._ask,
                conditions=conditions,
                call=self._call,
                ctx=ctx,
                principal=self._principal,
            )
        except BaseException:
            DOWNSTREAM_CAPABILITIES.reset(self._token)
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self._up.relay.leave(self._key)
        finally:
            DOWNSTREAM_CAPABILITIES.reset(self._token)


async def answered_for_legacy(
    call: CallContext,
    upstream: str,
    send: Callable[[Any, str | None], Awaitable[Any]],
    events: EventSink,
    handed_out: HandedOut,
    gate: RequestGate | None = None,
) -> Any:
    """Send the request; while a 2026 upstream answers input-required and the client is of
    the 2025 era (it cannot read one), ask the client and send again with its answers. The
    links in its sampling requests are its claims before the client sees them (``handed_out``,
    under the catalogue's name of the upstream; ``StateUnavailable`` refuses the call). Each
    request passes ``gate`` first (bounds and policy, ``asked.py``): one refused fails the call;
    so do those of an input-required result a 2026 client gets to answer itself."""
    ctx = call.downstream
    result = await send(call.input_responses, call.request_state)
    rounds = 0
    while isinstance(result, types.InputRequiredResult) and ctx is not None and not modern(ctx):
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise UpstreamError(f"upstream {upstream!r} still asked for input after {MAX_ROUNDS} rounds")
        audit_bridged(
            events,
            call,
            upstream,
            "2026-upstream-to-2025-client",
            [r.method for r in (result.input_requests or {}).values()],
        )
        # under the server's catalogue name (``upstream`` may be a replica's own, ``X-r2``)
        server = call.upstream.name if call.upstream is not None else upstream
        if gate is not None:
            await _gated(gate, events, call, upstream, server, result)
        if noted := handed_out.note_result(server, result):
            await handed_out.share(server, noted)
        answers = await _ask_client(gate, events, call, upstream, result)
        result = await send(answers or None, result.request_state)
    if isinstance(result, types.InputRequiredResult) and gate is not None:
        # for a 2026 client, which asks its user or model itself: the same gate first
        server = call.upstream.name if call.upstream is not None else upstream
        await _gated(gate, events, call, upstream, server, result)
    return result


async def bridged_for_modern_client(
    call: CallContext,
    up: Upstream,
    ctx: Any,
    progress: Any,
    *,
    pending: PendingQuestions,
    tg: anyio.abc.TaskGroup | None,
    events: EventSink,
) -> Any:
    """A 2026 client calling a 2025 upstream: the upstream's requests during the call come
    back to the client as input-required results (gateway.upstream.bridge)."""
    assert call.tool is not None and tg is not None
    if pending.owns(call.request_state):
        assert call.request_state is not None
        return await pending.resume(
            call.principal.qualified, call.target, call.request_state, dict(call.input_responses or {})
        )
    tool = call.tool

    async def run(ask: Callable[[Any], Awaitable[Any]]) -> Any:
        async def audited(request: Any) -> Any:
            audit_bridged(events, call, up.name, "2025-upstream-to-2026-client", [request.method])
            return await ask(request)

        with on_behalf_of(up, ctx, ask=audited, call=call):
            return await up.call_tool(tool.original_name, call.arguments, progress=progress)

    return await pending.start(tg, call.principal.qualified, call.target, run)


async def _ask_client(
    gate: RequestGate | None, events: EventSink, call: CallContext, upstream: str, result: Any
) -> dict[str, Any]:
    """Put ``result``'s questions to the 2025 client, one of ``upstream``'s in flight for its
    caller for the bound (``RequestGate.take``): past it the call is refused, as the relay
    refuses."""
    asked = list((result.input_requests or {}).values())
    caller = call.principal.qualified
    busy = gate.take(upstream, caller) if gate is not None and asked else None
    if busy is not None:
        _refuse(events, call, upstream, asked[0].method, busy)
    ctx = call.downstream
    try:
        return await ask_legacy_client(
            getattr(ctx, "session", None), getattr(ctx, "request_id", None), result
        )
    finally:
        if gate is not None and asked:
            gate.give(upstream, caller)


async def _gated(
    gate: RequestGate,
    events: EventSink,
    call: CallContext,
    upstream: str,
    server: str,
    result: types.InputRequiredResult,
) -> None:
    """Raise when a request of ``result`` is refused (on the record, as the relay's refusals)."""
    who = Requester(
        call.principal, call.agent, call.session_id, call.upstream, {"kind": call.kind, "target": call.target}
    )
    refused = await gate.decide_all(result.input_requests, server, who)
    if refused is None:
        return
    _refuse(events, call, upstream, *refused)


def _refuse(events: EventSink, call: CallContext, upstream: str, method: str, refusal: Refusal) -> NoReturn:
    """Refuse the call for ``method``, a request of ``upstream``'s: on the record, as the
    relay's refusals."""
    details = {
        "upstream": upstream,
        "method": method,
        "outcome": "refused",
        "reason": refusal.reason,
        "error_code": refusal.error_code,
        "reasons": list(refusal.reasons),
    }
    try:
        events.emit(Event.UPSTREAM_CLIENT_REQUEST, details, principal=caller_owner(call.downstream))
    except Exception:  # the refusal stands whatever the sink does (as the relay's records)
        _logger.exception("upstream %s: recording a refused %s failed", upstream, method)
    text = f"{method} from upstream {upstream!r} refused: {refusal.reason}"
    raise PolicyDenied(text) if refusal.error_code == "policy_denied" else UpstreamError(text)


def audit_bridged(
    events: EventSink, call: CallContext, upstream: str, direction: str, methods: list[str]
) -> None:
    events.emit(
        Event.BRIDGE_INPUT_REQUEST,
        {"direction": direction, "methods": methods, "target": call.target, "upstream": upstream},
        principal=call.principal.id,
        agent=call.principal.agent,
    )
