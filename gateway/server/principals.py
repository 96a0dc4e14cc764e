"""Who is calling and in which session: the principal (HTTP auth or the configured stdio
one), the agent the runtime makes for its session, and the session id the audit log records.
Every id here is one the gateway made or checked, never a client's choice."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from mcp.server import ServerRequestContext
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import Scope

from gateway.app import Gateway
from gateway.compat import connection_of
from gateway.config.model import Config
from gateway.context import Principal
from gateway.errors import PolicyDenied
from gateway.runtime.agents import HTTP_SESSION, STDIO_SESSION

_HEADERS = "symbi.headers"  # the scope key of the parsed headers (scope_headers)
_BOUND_KEPT = 1024  # principal/agent bindings kept (principal_for)


def scope_headers(scope: Scope) -> dict[str, str]:
    """The request's headers, parsed once per request into the scope for every layer that
    reads them (each built its own Starlette ``Headers`` and scanned the raw list per lookup);
    parsed again only if a layer changes them.
    Read as ``Headers.get`` reads them, so each layer sees the value the SDK's own checks see:
    names as the server gives them (lower case, as ASGI has it), of a repeated header the first."""
    raw = scope["headers"]
    cached = scope.get(_HEADERS)
    # the same list (every read but the first: no compare of its items), or an equal one:
    # Starlette's Headers(scope=...) puts a copy of it in the scope
    if cached is not None and (cached[0] is raw or cached[0] == raw):
        return cached[1]  # type: ignore[no-any-return]
    parsed = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(raw)}
    scope[_HEADERS] = (raw, parsed)
    return parsed


def stdio_principal(config: Config) -> Principal:
    """The configured stdio principal (made once per config: it is asked for on every call)."""
    made = _STDIO.get(id(config))
    if made is None or made[0] is not config:
        p = config.gateway.stdio_principal
        made = _STDIO[id(config)] = (config, Principal(id=p.id, kind=p.kind, roles=tuple(p.roles)))
        if len(_STDIO) > 16:  # configs of finished gateways (tests make many)
            del _STDIO[next(iter(_STDIO))]
    return made[1]


_STDIO: dict[int, tuple[Config, Principal]] = {}


def authenticated_principal(ctx: ServerRequestContext[Any], config: Config) -> Principal:
    """Who is calling: the HTTP auth middleware's principal, or the configured stdio one."""
    request = ctx.request
    if request is None:
        return stdio_principal(config)
    principal = request.scope.get("symbi.principal")
    if isinstance(principal, Principal):
        return principal
    # The HTTP front refuses unauthenticated requests before they get here; this is the
    # last line: no principal, no access.
    raise PolicyDenied("no authenticated principal for this request")


def http_session_key(sid: str) -> str:
    """The agent session key of the HTTP session ``sid`` (also used when it closes)."""
    return f"{HTTP_SESSION}{sid}"


def agent_session_key(ctx: ServerRequestContext[Any], principal: Principal) -> str:
    """The session part of an agent's identity, from what the gateway itself vouches for.

    stdio: one client per process. HTTP with a session: the ``mcp-session-id`` the SDK issued
    (bound to the credential that opened it). Stateless HTTP (2026-07-28): the credential;
    there the SDK checks no session id, so a header sent with such a request is the client's
    choice and names nothing (else every forged id would be a new agent).
    """
    request = ctx.request
    if request is None:
        return STDIO_SESSION
    headers = scope_headers(request.scope)  # the front's parse (Starlette's Headers: a scan per get)
    sid = headers.get("mcp-session-id")
    era = headers.get("mcp-protocol-version")
    if sid and (era is None or era in HANDSHAKE_PROTOCOL_VERSIONS):  # the SDK's session routing
        return http_session_key(sid)
    kid = principal.claims.get("key_id") if principal.source == "key" else None
    if kid is not None:
        return f"key:{kid}"
    return principal.qualified  # jwt:<issuer>#<sub>, anonymous:<id>


def client_name_of(ctx: ServerRequestContext[Any]) -> object:
    """The client's declared ``clientInfo.name`` (handshake or 2026 envelope); a label only."""
    params = ctx.session.client_params
    return params.client_info.name if params is not None else None


def principal_for(ctx: ServerRequestContext[Any], gw: Gateway) -> Principal:
    """The caller, bound to the agent the runtime made for its session (``Principal.agent``)."""
    principal = authenticated_principal(ctx, gw.config)
    agent = gw.agents.for_session(principal, client_name_of(ctx), agent_session_key(ctx, principal))
    # HTTP authenticates every request anew (a new, equal principal each time): the binding is
    # kept by the principal's fields, claims as their repr (tells 1, 1.0 and True apart)
    key = (*bound_fields(principal), agent.id)
    try:
        bound = _BOUND.get(key)
    except TypeError:  # a field that is not hashable (roles as a list): not kept
        return dataclasses.replace(principal, agent=agent.id)
    if bound is None:
        if len(_BOUND) >= _BOUND_KEPT:
            _BOUND.clear()
        bound = _BOUND[key] = dataclasses.replace(principal, agent=agent.id)
    return bound


def bound_fields(p: Principal) -> tuple[Any, ...]:
    """Every field of ``p`` but ``agent`` (the binding's): equal tuples, equal principals."""
    return (p.id, p.kind, p.roles, repr(p.claims), p.source, p.issuer)


# principal fields + agent id -> the bound principal (frozen: shared by the calls that equal it)
_BOUND: dict[tuple[Any, ...], Principal] = {}


def session_id_of(ctx: ServerRequestContext[Any]) -> str:
    """The session id the audit log records: always one the gateway made or checked.

    Handshake-era HTTP: the ``mcp-session-id`` the SDK session manager issued, which it
    already checked belongs to this credential. 2026-era HTTP has no server session, so the
    client's header is only a label: it is scoped to the caller (a digest of the qualified
    principal and the label), so no principal can file its calls under another's session.
    """
    request = ctx.request
    if request is None:
        return f"session-{id(connection_of(ctx.session))}"
    headers = scope_headers(request.scope)
    label = headers.get("mcp-session-id") or ""
    era = headers.get("mcp-protocol-version")
    if label and (era is None or era in HANDSHAKE_PROTOCOL_VERSIONS):
        return str(label)  # issued by the session manager, bound to the credential that opened it
    principal = request.scope.get("symbi.principal")
    who = principal.qualified if isinstance(principal, Principal) else ""
    return "caller-" + hashlib.sha256(f"{who}\0{label}".encode()).hexdigest()[:32]
