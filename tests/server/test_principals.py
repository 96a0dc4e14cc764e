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
