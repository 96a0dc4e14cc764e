"""``gateway.listen.ListenHub``: a push reaches only the streams of the principals it names, by
qualified id, and only the kinds each stream asked for. In process: the hub's streams are
anyio memory streams; the wire side is covered end to end in tests/server (list changes)."""

from __future__ import annotations

import anyio
import pytest
from mcp import types
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

from gateway.context import Principal
from gateway.errors import TooManyListens
from gateway.listen import ListenHub

ALICE_KEY = Principal(id="alice", kind="user", source="key")
ALICE_JWT = Principal(id="alice", kind="user", source="jwt", issuer="https://idp.example")
BOB_KEY = Principal(id="bob", kind="user", source="key")
TOOLS = types.SubscriptionFilter(tools_list_changed=True)


def _drain(recv: anyio.streams.memory.MemoryObjectReceiveStream[object]) -> list[object]:
    got = []
    while True:
        try:
            got.append(recv.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream):  # nothing more, or the hub ended it
            return got


def test_a_push_reaches_only_the_named_qualified_principals() -> None:
    hub = ListenHub()
    key_alice, r1 = hub.open(ALICE_KEY, TOOLS)
    jwt_alice, r2 = hub.open(ALICE_JWT, TOOLS)
    _bob, r3 = hub.open(BOB_KEY, TOOLS)
    # same id, two namespaces: two principals to ask about, not one
    assert set(hub.principals()) == {"key:alice", "jwt:https://idp.example#alice", "key:bob"}
    assert hub.push(ToolsListChanged(), to=["key:alice"]) == 1
    assert len(_drain(r1)) == 1 and _drain(r2) == [] and _drain(r3) == []
    # the bare id names nobody: a JWT subject "alice" is not told because a key "alice" may see
    assert hub.push(ToolsListChanged(), to=["alice"]) == 0
    assert hub.push(ToolsListChanged()) == 3  # no names: everyone who asked
    hub.discard(key_alice)
    hub.discard(jwt_alice)
    assert set(hub.principals()) == {"key:bob"} and len(hub) == 1


def test_only_the_kinds_and_resources_a_stream_asked_for() -> None:
    hub = ListenHub()
    _s, recv = hub.open(ALICE_KEY, types.SubscriptionFilter(resource_subscriptions=["bus://inbox"]))
    assert hub.push(ToolsListChanged()) == 0
    assert hub.push(ResourceUpdated(uri="bus://other")) == 0
    assert hub.push(ResourceUpdated(uri="bus://inbox")) == 1
    assert _drain(recv) == [ResourceUpdated(uri="bus://inbox")]


def test_a_stream_that_stops_reading_is_ended_not_buffered_forever() -> None:
    hub = ListenHub(max_buffered_events=2)
    _s, recv = hub.open(ALICE_KEY, TOOLS)
    assert [hub.push(ToolsListChanged()) for _ in range(3)] == [1, 1, 0]
    assert len(hub) == 0  # dropped from the hub once its backlog was full
    assert len(_drain(recv)) == 2


def test_a_principal_holds_at_most_its_share_of_streams() -> None:
    hub = ListenHub(max_per_principal=2)
    first, _ = hub.open(ALICE_KEY, TOOLS)
    hub.open(ALICE_KEY, TOOLS)
    with pytest.raises(TooManyListens):
        hub.open(ALICE_KEY, TOOLS)
    hub.open(ALICE_JWT, TOOLS)  # another principal (same id, another namespace) is not counted
    hub.discard(first)
    hub.discard(first)  # a stream ended twice (the sweep, then its own request) frees one place
    hub.open(ALICE_KEY, TOOLS)
    with pytest.raises(TooManyListens):
        hub.open(ALICE_KEY, TOOLS)


def test_streams_of_revoked_keys_and_expired_tokens_end() -> None:
    key = Principal(id="alice", kind="user", source="key", claims={"key_id": "0123456789ab"})
    other = Principal(id="bob", kind="user", source="key", claims={"key_id": "ba9876543210"})
    token = Principal(id="dana", kind="user", source="jwt", issuer="https://idp", claims={"exp": 100})
    hub = ListenHub()
    _k, r_key = hub.open(key, TOOLS)
    _o, r_other = hub.open(other, TOOLS)
    _t, r_token = hub.open(token, TOOLS)
    assert hub.key_ids() == {"0123456789ab", "ba9876543210"}
    assert hub.end_revoked(set(), now=99.0) == 0  # the token is still valid
    assert hub.end_revoked({"0123456789ab"}, now=101.0) == 2
    assert set(hub.principals()) == {"key:bob"}
    for recv in (r_key, r_token):
        with pytest.raises(anyio.EndOfStream):
            recv.receive_nowait()
    assert hub.push(ToolsListChanged()) == 1 and len(_drain(r_other)) == 1
