"""Who is calling (``gateway.server.principals``): the per-call shortcuts give what the full
path gives. The gateway, the request context and its session are stand-ins (``SimpleNamespace``)
holding only what ``principal_for`` reads; the config loader and the agent registry are real."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from gateway.config.load import load_config
from gateway.events import LoggingSink
from gateway.runtime.agents import AgentRegistry
from gateway.server.principals import principal_for, stdio_principal
from tests.conftest import write_config


def _config(tmp_path: Path, pid: str) -> object:
    folder = tmp_path / pid
    folder.mkdir()
    return load_config(write_config(folder, f'[gateway.stdio_principal]\nid = "{pid}"\n'))


def test_the_stdio_principal_is_made_once_per_config(tmp_path: Path) -> None:
    one, two = _config(tmp_path, "alice"), _config(tmp_path, "bob")
    assert stdio_principal(one) is stdio_principal(one)  # type: ignore[arg-type]
    assert stdio_principal(one).id == "alice" and stdio_principal(two).id == "bob"  # type: ignore[arg-type]


def test_principal_for_binds_each_caller_to_its_own_agent(tmp_path: Path) -> None:
    agents = AgentRegistry(LoggingSink())
    session = SimpleNamespace(client_params=None)
    ctx = SimpleNamespace(request=None, session=session)
    gws = [SimpleNamespace(config=_config(tmp_path, pid), agents=agents) for pid in ("alice", "bob")]
    seen = []
    for gw in [gws[0], gws[1], gws[0], gws[0], gws[1]]:  # alternating callers: no stale binding
        p = principal_for(ctx, gw)  # type: ignore[arg-type]
        assert p.agent == agents.for_session(stdio_principal(gw.config), None, "stdio").id
        seen.append(p)
    assert [p.id for p in seen] == ["alice", "bob", "alice", "alice", "bob"]
    assert seen[0].agent != seen[1].agent
    assert seen[2] is seen[3]  # the same caller and agent: the binding is reused


def _http_ctx(sid: str) -> SimpleNamespace:
    from starlette.requests import Request

    scope = {"type": "http", "headers": [(b"mcp-session-id", sid.encode())]}
    return SimpleNamespace(request=Request(scope), session=SimpleNamespace(client_params=None))


def test_a_binding_is_reused_only_for_an_equal_principal(tmp_path: Path) -> None:
    """HTTP authenticates every request anew (a new, equal principal each time): the binding
    is kept by the principal's fields; a principal that differs in any field never gets it."""
    import dataclasses

    from gateway.context import Principal
    from gateway.server.principals import bound_fields

    agents = AgentRegistry(LoggingSink())
    gw = SimpleNamespace(config=_config(tmp_path, "stdio"), agents=agents)
    base = Principal(id="alice", kind="user", roles=("reader",), claims={"key_id": "k1"}, source="key")
    variants = [
        dataclasses.replace(base, id="bob"),
        dataclasses.replace(base, kind="admin"),
        dataclasses.replace(base, roles=("reader", "admin")),
        dataclasses.replace(base, claims={"key_id": "k2"}),
        dataclasses.replace(base, claims={"key_id": 1}),
        dataclasses.replace(base, source="jwt", issuer="https://idp.example"),
        dataclasses.replace(base, issuer="https://other.example"),
    ]
    # every field but the agent is in the key: a field added to Principal must be added there
    assert len(bound_fields(base)) == len(dataclasses.fields(Principal)) - 1
    ctx = _http_ctx("s1")
    first = principal_for(_request(ctx, base), gw)  # type: ignore[arg-type]
    again = principal_for(_request(ctx, dataclasses.replace(base)), gw)  # type: ignore[arg-type]
    assert again is first and first.agent is not None
    for v in variants:
        bound = principal_for(_request(ctx, v), gw)  # type: ignore[arg-type]
        assert bound is not first and dataclasses.replace(bound, agent=None) == v
    other_session = principal_for(_request(_http_ctx("s2"), base), gw)  # type: ignore[arg-type]
    assert other_session.agent != first.agent  # another session: another agent, another binding


def _request(ctx: SimpleNamespace, p: object) -> SimpleNamespace:
    ctx.request.scope["symbi.principal"] = p
    return ctx
