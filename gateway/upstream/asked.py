"""What an upstream's own request to the client (sampling, elicitation, roots) passes first.

An upstream may ask the calling client's model to write (``sampling/createMessage``), ask its
user to fill a form (``elicitation/create``) or ask for its roots (``roots/list``). Before
session 40 the relay put every such request to the client: the policy was never asked, and
nothing bounded how many were in flight (the SDK runs one task per request) or how large one
was. Each now passes, in this order (``gateway.upstream.relay``):

1. a bound per upstream session: at most ``mcp.max_server_requests_in_flight`` relayed or
   being decided at once; past it, a JSON-RPC error to the upstream at once. A 2026
   upstream's input requests put to a 2025 client: at most that many results' questions
   (and as many in one result) per upstream at once (``take``); past it the call is refused;
2. a size: its params as JSON at most ``mcp.max_server_request_bytes``;
3. the policy: ``data.symbi.decision`` with ``kind = "server_request"`` (the input below). A
   deny, an undefined decision or an engine failure refuses it, naming the decision.

Each refusal is an ``upstream.client_request`` event with an ``error_code``, counted against
the caller's refusal budget (``gateway.events.TALLIED_EVENTS``). A tool call never comes here:
only an upstream's own requests do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from mcp import types

from gateway.context import AgentInfo, Principal, UpstreamInfo
from gateway.policy.engine import PolicyEngine
from gateway.policy.inputdoc import build_input, upstream_input

__all__ = ["Refusal", "RequestGate", "Requester", "refusal_error"]

KIND = "server_request"


@dataclass(frozen=True)
class Refusal:
    """Why a request is not relayed: the error the upstream gets and the audit's details."""

    error_code: str  # policy_denied | too_many_server_requests | server_request_too_large
    reason: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Requester:
    """Whose client the request would reach, and the call that was in flight for it."""

    principal: Principal | None
    agent: AgentInfo | None = None
    session_id: str | None = None
    upstream: UpstreamInfo | None = None
    caused_by: dict[str, Any] | None = None  # {"kind", "target"} of the caller's request


class RequestGate:
    """The policy and the bounds, shared by every upstream session of a gateway."""

    def __init__(
        self,
        policy: PolicyEngine | None,
        *,
        in_flight: int,
        max_bytes: int,
        decision: str = "data.symbi.decision",
    ) -> None:
        self.policy = policy  # None only when the config turns policies off (an unsafe option)
        self.in_flight = in_flight
        self.max_bytes = max_bytes
        self._decision = decision
        # a 2026 upstream's questions being put to a 2025 client now, per upstream (the relay
        # counts its own upstream session's requests: ``CallerRelay._asking``)
        self._legacy: dict[tuple[str, str], int] = {}  # (upstream, caller) -> in flight

    def busy(self, asking: int) -> Refusal | None:
        if asking < self.in_flight:
            return None
        return Refusal(
            "too_many_server_requests",
            f"{asking} requests of this upstream session are in flight already "
            f"(mcp.max_server_requests_in_flight = {self.in_flight})",
        )

    def take(self, upstream: str, caller: str) -> Refusal | None:
        """One more of ``upstream``'s questions put to 2025 client ``caller`` (qualified; ``give``
        it back after), or why not: each call's round is asked one at a time, but concurrent
        calls each had one in flight, so the bound was one result's, never the upstream's
        (session 41). Per caller: one that never answers must not hold every other's turn."""
        asking = self._legacy.get((upstream, caller), 0)
        refusal = self.busy(asking)
        if refusal is None:
            self._legacy[upstream, caller] = asking + 1
        return refusal

    def give(self, upstream: str, caller: str) -> None:
        left = self._legacy.get((upstream, caller), 0) - 1
        if left > 0:
            self._legacy[upstream, caller] = left
        else:
            self._legacy.pop((upstream, caller), None)

    def params_doc(self, params: Any) -> tuple[dict[str, Any], Refusal | None]:
        """The params the policy sees (without ``_meta``), or why they are too large."""
        doc: dict[str, Any] = (
            params.model_dump(mode="json", by_alias=True, exclude_none=True) if params is not None else {}
        )
        doc.pop("_meta", None)
        size = len(orjson.dumps(doc))
        if size > self.max_bytes:
            return doc, Refusal(
                "server_request_too_large",
                f"its params are {size} bytes of JSON (mcp.max_server_request_bytes = {self.max_bytes})",
            )
        return doc, None

    async def decide(
        self, method: str, server: str, request: dict[str, Any], who: Requester
    ) -> Refusal | None:
        """None when the policy allows the request; its refusal otherwise (fail closed)."""
        if self.policy is None:
            return None
        if who.principal is None:
            return Refusal("policy_denied", "no principal to ask the policy about", ())
        up = who.upstream if who.upstream is not None and who.upstream.name == server else None
        doc = build_input(
            principal=who.principal,
            kind=KIND,
            target=method,
            upstream=None,
            session_id=who.session_id,
            agent=who.agent,
            extra={
                "method": method,
                "server": server,
                "upstream": upstream_input(up, server),
                "request": request,
                "caused_by": who.caused_by,
            },
        )
        try:
            decision = await self.policy.adecide(doc)
        except Exception as e:  # noqa: BLE001 - an engine that fails refuses (it should not raise)
            return Refusal("policy_denied", f"the policy failed: {type(e).__name__}", ())
        if decision.allow is True:
            return None
        reasons = tuple(decision.reasons) or ("denied (no reason given)",)
        return Refusal(
            "policy_denied", f"denied by the policy ({self._decision}): {'; '.join(reasons)}", reasons
        )

    async def decide_all(self, requests: Any, server: str, who: Requester) -> tuple[str, Refusal] | None:
        """A 2026 upstream's input requests (one input-required result, put to a 2025 client
        one after the other): the bounds and the policy for each; the first refused, or None."""
        items = list(requests.values()) if requests else []
        if len(items) > self.in_flight:
            return items[0].method, Refusal(
                "too_many_server_requests",
                f"{len(items)} input requests in one result "
                f"(mcp.max_server_requests_in_flight = {self.in_flight})",
            )
        for request in items:
            doc, refusal = self.params_doc(getattr(request, "params", None))
            if refusal is None:
                refusal = await self.decide(request.method, server, doc, who)
            if refusal is not None:
                return request.method, refusal
        return None


def refusal_error(method: str, upstream: str, refusal: Refusal) -> types.ErrorData:
    """The JSON-RPC error the upstream gets for a refused request."""
    return types.ErrorData(
        code=types.INVALID_REQUEST,
        message=f"symbi: {method} from upstream {upstream!r} refused: {refusal.reason}",
        data={"code": refusal.error_code, "reasons": list(refusal.reasons)},
    )
