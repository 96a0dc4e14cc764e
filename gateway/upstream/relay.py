"""Relay of an upstream's server→client traffic to the downstream client that made the call.

An upstream session is shared by every client, and a handshake-era upstream (stdio above
all) carries no link between a server→client request (sampling, elicitation, roots) and
the call that caused it. We keep the downstream callers with a call in flight on this
upstream, each with its owner (the qualified principal). A request is relayed only when
every caller in flight belongs to one owner (then to that owner's most recent call);
with callers of several principals in flight it is ambiguous and refused, and with none
it is refused too: a principal's model never answers another principal's upstream.
(A 2026-07-28 upstream returns such requests inside the call's result, routed by the call
itself; the SDK client's ``ClientRequestContext`` carries no related request id, so the
handshake era cannot be routed by request. ``servers.X.isolation`` gives each caller its own
process instead: ``isolation.py``.)
Every relayed and refused request is an audit event (``upstream.client_request``). Before it
is relayed, each passes the bounds and the policy of ``gateway.upstream.asked`` (a refusal's
event carries its ``error_code``).

A sampling request's links (``resource_link`` items, embedded resources) are the upstream's
claims, as a tool result's are (``gateway.handouts``): the client's model may read them through
the gateway, and another upstream's catch-all template must not take that read. They are noted,
and shared with the other replicas, before the request is relayed; a shared store that cannot be
written refuses the relay (fail closed).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mcp import types
from mcp.client.session import ClientRequestContext
from mcp.server.session import ServerSession
from mcp.shared.message import ServerMessageMetadata

from gateway.context import CallContext, Principal
from gateway.events import Event, EventSink
from gateway.handouts import HandedOut
from gateway.policy.results import log_data
from gateway.upstream.asked import Refusal, Requester, RequestGate, refusal_error

if TYPE_CHECKING:
    from gateway.context import Downstream

_logger = logging.getLogger("symbi.relay")


@dataclass(frozen=True)
class _Caller:
    session: ServerSession
    request_id: Any
    owner: str  # the qualified principal ("key:alice", "stdio:local", ...)
    # a 2026-era caller cannot take a server->client request: the era bridge asks it instead
    # (gateway.upstream.bridge)
    ask: Callable[[Any], Awaitable[Any]] | None = None
    # the call's result conditions: a log line the upstream sends meanwhile is its words too
    conditions: Mapping[str, Any] | None = None
    # the call (a CallContext) and the request context: who the policy is asked about, read
    # only when the upstream asks something (never on the call's own path)
    call: CallContext | None = None
    ctx: Downstream | None = None
    # the caller of a request that is no call (resources/subscribe, completion/complete): on
    # stdio the request context has no principal; without it every request was refused there
    principal: Principal | None = None

    def requester(self) -> Requester:
        call = self.call
        if call is not None:
            caused = {"kind": call.kind, "target": call.target}
            return Requester(call.principal, call.agent, call.session_id, call.upstream, caused)
        return Requester(self.principal or caller_principal(self.ctx))


def caller_owner(ctx: Any) -> str:
    """Whose call this is: the HTTP front's principal, or the one stdio principal."""
    request = getattr(ctx, "request", None)
    principal = request.scope.get("symbi.principal") if request is not None else None
    qualified = getattr(principal, "qualified", None)
    if isinstance(qualified, str):
        return qualified
    return "stdio" if request is None else "unknown"


def caller_principal(ctx: Any) -> Principal | None:
    """The HTTP front's principal of ``ctx``, or None (stdio, none: the policy is not asked)."""
    request = getattr(ctx, "request", None)
    principal = request.scope.get("symbi.principal") if request is not None else None
    return principal if isinstance(principal, Principal) else None


class CallerRelay:
    def __init__(
        self,
        upstream: str,
        events: EventSink | None = None,
        *,
        handed_out: HandedOut | None = None,
        claimant: str | None = None,
        gate: RequestGate | None = None,
    ) -> None:
        self._upstream = upstream
        self._events = events
        # the bounds and the policy each request passes (None: a relay built by hand, unbounded)
        self._gate = gate
        self._asking = 0  # requests of this upstream's being decided or relayed now
        # the catalogue's hand-outs, and the name a claim is under: the server's, which a
        # replica's or an isolated process's own name (``X-r2``, ``X-i1``) is not
        self._handed_out = handed_out
        self._claimant = claimant or upstream
        self._inflight: dict[int, _Caller] = {}
        self._ids = itertools.count()

    @property
    def in_flight(self) -> int:
        """Calls to this upstream currently relaying back to a caller (``GET /api/state``)."""
        return len(self._inflight)

    @contextlib.contextmanager
    def caller(
        self,
        session: ServerSession | None,
        request_id: Any = None,
        owner: str = "unknown",
        ask: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> Iterator[None]:
        key = self.enter(session, request_id, owner, ask)
        try:
            yield
        finally:
            self.leave(key)

    def enter(
        self,
        session: ServerSession | None,
        request_id: Any = None,
        owner: str = "unknown",
        ask: Callable[[Any], Awaitable[Any]] | None = None,
        conditions: Mapping[str, Any] | None = None,
        call: CallContext | None = None,
        ctx: Downstream | None = None,
        principal: Principal | None = None,
    ) -> int | None:
        """``caller`` without the generator (the call path's cost): the key for ``leave``."""
        if session is None:
            return None
        key = next(self._ids)
        self._inflight[key] = _Caller(session, request_id, owner, ask, conditions, call, ctx, principal)
        return key

    def leave(self, key: int | None) -> None:
        if key is not None:
            self._inflight.pop(key, None)

    def _target(self, what: str) -> tuple[_Caller | None, str | None]:
        """(the caller to relay to, or None with the reason for refusing)."""
        callers = list(self._inflight.values())
        if not callers:
            return None, "no client call in flight"
        owners = {c.owner for c in callers}
        if len(owners) > 1 or "unknown" in owners:
            return None, "calls of several principals are in flight: whose it is cannot be told"
        return callers[-1], None

    def _record(
        self,
        method: str,
        outcome: str,
        owner: str | None,
        reason: str | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        if self._events is None:
            return
        details: dict[str, Any] = {
            "upstream": self._upstream,
            "method": method,
            "outcome": outcome,
            "reason": reason,
        }
        if refusal is not None:
            details.update(error_code=refusal.error_code, reasons=list(refusal.reasons))
        try:
            self._events.emit(Event.UPSTREAM_CLIENT_REQUEST, details, principal=owner)
        except Exception:
            _logger.exception("recording a relayed request failed")

    def refused(self, method: str, reason: str) -> None:
        """A request of the upstream's refused before it could be relayed (its text is not
        valid UTF-8: gateway.upstream.unreadable answered it)."""
        self._record(method, "refused", None, reason)

    async def _relay(
        self,
        method: str,
        params: Any,
        send: Callable[[_Caller], Awaitable[Any]],
        refused: Any = None,
        sampled: types.CreateMessageRequestParams | None = None,
    ) -> Any:
        down, reason = self._target(method)
        if down is None:
            self._record(method, "refused", None, reason)
            _logger.warning("upstream %s: %s refused: %s", self._upstream, method, reason)
            if refused is not None:  # roots/list: an empty list
                return refused
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"symbi: {method} from upstream {self._upstream!r} refused: {reason}",
            )
        gate = self._gate
        if gate is None:
            return await self._send(method, down, send, sampled)
        refusal = gate.busy(self._asking)
        if refusal is not None:
            return self._refuse(method, down.owner, refusal)
        self._asking += 1
        try:
            request, refusal = gate.params_doc(params)
            if refusal is None:
                refusal = await gate.decide(method, self._claimant, request, down.requester())
            if refusal is not None:
                return self._refuse(method, down.owner, refusal)
            return await self._send(method, down, send, sampled)
        finally:
            self._asking -= 1

    def _refuse(self, method: str, owner: str, refusal: Refusal) -> types.ErrorData:
        """A request the bounds or the policy refused: on the record (counted against the
        caller's refusal budget), and a JSON-RPC error naming why to the upstream."""
        self._record(method, "refused", owner, refusal.reason, refusal)
        _logger.info("upstream %s: %s refused: %s", self._upstream, method, refusal.reason)
        return refusal_error(method, self._upstream, refusal)

    async def _send(
        self,
        method: str,
        down: _Caller,
        send: Callable[[_Caller], Awaitable[Any]],
        sampled: types.CreateMessageRequestParams | None,
    ) -> Any:
        if sampled is not None and (reason := await self._claim(sampled)) is not None:
            self._record(method, "refused", down.owner, reason)
            _logger.warning("upstream %s: %s refused: %s", self._upstream, method, reason)
            return types.ErrorData(
                code=types.INVALID_REQUEST,
                message=f"symbi: {method} from upstream {self._upstream!r} refused: {reason}",
            )
        self._record(method, "relayed", down.owner)
        try:
            return await send(down)
        except Exception as e:  # noqa: BLE001 - the upstream gets an error, not a crash
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"{method} relay failed: {e}")

    async def _claim(self, params: types.CreateMessageRequestParams) -> str | None:
        """The links in a sampling request, the upstream's claims before the client sees them;
        why the request is refused when they cannot be kept for every replica, else None."""
        if self._handed_out is None:
            return None
        noted = self._handed_out.note_sampling(self._claimant, params)
        try:
            await self._handed_out.share(self._claimant, noted)
        except Exception as e:  # noqa: BLE001 - StateUnavailable above all: fail closed, on the record
            return f"its links cannot be kept as its claims: {e}"
        return None

    async def sampling(self, context: ClientRequestContext, params: types.CreateMessageRequestParams) -> Any:
        return await self._relay(
            "sampling/createMessage",
            params,
            lambda c: (
                _asked(c.ask, types.CreateMessageRequest(params=params))
                if c.ask
                else c.session.send_request(
                    types.CreateMessageRequest(params=params),
                    types.CreateMessageResult,
                    metadata=_related(c.request_id),
                )
            ),
            sampled=params,
        )

    async def elicitation(self, context: ClientRequestContext, params: types.ElicitRequestParams) -> Any:
        return await self._relay(
            "elicitation/create",
            params,
            lambda c: (
                _asked(c.ask, types.ElicitRequest(params=params))
                if c.ask
                else c.session.send_request(
                    types.ElicitRequest(params=params), types.ElicitResult, metadata=_related(c.request_id)
                )
            ),
        )

    async def list_roots(self, context: ClientRequestContext) -> Any:
        return await self._relay(
            "roots/list",
            None,
            lambda c: (
                _asked(c.ask, types.ListRootsRequest())
                if c.ask
                else c.session.send_request(
                    types.ListRootsRequest(), types.ListRootsResult, metadata=_related(c.request_id)
                )
            ),
            refused=types.ListRootsResult(roots=[]),
        )

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        _logger.debug("upstream %s log [%s]: %s", self._upstream, params.level, params.data)
        down, _reason = self._target("notifications/message")
        if down is None:
            return  # a log line is not worth a guess either
        data = params.data if down.conditions is None else log_data(params.data, down.conditions)
        if data is None:
            return  # redact_result: prose and values the key rules cannot all read
        with contextlib.suppress(Exception):
            await down.session.send_log_message(
                params.level,
                data,
                logger=params.logger or self._upstream,
                related_request_id=down.request_id,
            )


async def _asked(ask: Callable[[Any], Awaitable[Any]], request: Any) -> Any:
    try:
        return await ask(request)
    except Exception as e:  # noqa: BLE001 - the upstream gets an error (no answer in time...), not a crash
        return types.ErrorData(
            code=types.INTERNAL_ERROR,
            message=f"{request.method}: no answer from the client ({type(e).__name__})",
        )


def _related(request_id: Any) -> ServerMessageMetadata | None:
    return ServerMessageMetadata(related_request_id=request_id) if request_id is not None else None
