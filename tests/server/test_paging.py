"""The ``tools/list`` cursor (``gateway.server.paging``): opaque, MAC'd, bound to its caller,
valid on every gateway keyed from the same shared secret and serving the same catalogue.

The listing itself (pages, the policy, a changing catalogue) is tested with the real SDK client
over HTTP in ``tests/server/http/test_tools_paging.py``, across two gateways in
``tests/server/http/test_tools_paging_replicas.py``; these are the cursor's own checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from gateway.catalog import Catalog, LiveCatalog, UpstreamListing, order_digest
from gateway.config import load_config
from gateway.context import Principal
from gateway.errors import ConfigError
from gateway.server.paging import ToolPager, config_cursor_key, cursor_key
from tests.conftest import write_config

ALICE = Principal(id="alice", source="key")
JWT_ALICE = Principal(id="alice", source="jwt", issuer="https://idp.invalid")
SECRET = bytes(range(32))
DIGEST = order_digest(["a__x", "a__y"])


def _refused(pager: ToolPager, who: Principal, cursor: str) -> None:
    with pytest.raises(MCPError) as info:
        pager.decode(who, cursor)
    assert info.value.code == types.INVALID_PARAMS


def _pager(secret: bytes = SECRET) -> ToolPager:
    return ToolPager(10, cursor_key(secret))


def test_a_cursor_round_trips_for_its_caller() -> None:
    pager = _pager()
    assert pager.decode(ALICE, pager.encode(ALICE, DIGEST, 500)) == (DIGEST, 500)


def test_a_cursor_is_opaque() -> None:
    cursor = _pager().encode(ALICE, DIGEST, 500)
    assert "alice" not in cursor and cursor.count(".") == 1


def test_another_pager_keyed_from_the_same_secret_accepts_it() -> None:
    """Another replica, or this gateway after a restart: the same shared secret, the same key."""
    cursor = _pager().encode(ALICE, DIGEST, 500)
    assert _pager(bytes(SECRET)).decode(ALICE, cursor) == (DIGEST, 500)


def test_another_secret_another_caller_or_an_edit_is_refused() -> None:
    pager = _pager()
    cursor = pager.encode(ALICE, DIGEST, 500)
    _refused(pager, JWT_ALICE, cursor)  # same id, another namespace
    _refused(_pager(os.urandom(32)), ALICE, cursor)  # a gateway that does not share the secret
    body, mac = cursor.split(".")
    forged = base64.urlsafe_b64encode(f"{DIGEST}:0".encode()).rstrip(b"=").decode()
    _refused(pager, ALICE, f"{forged}.{mac}")
    for bad in ("", ".", "a.b.c", body, f"{body}.", f"{body}.{mac[:-2]}", "%%.%%", f"{DIGEST}:0"):
        _refused(pager, ALICE, bad)


def test_the_key_is_derived_never_the_shared_secret_itself() -> None:
    """A cursor MAC'd under the bare secret (the bus's key-directory MAC key) is refused."""
    body = f"{DIGEST}:10".encode()
    bare = hmac.new(SECRET, ALICE.qualified.encode() + b"\0" + body, hashlib.sha256).digest()[:16]
    b64 = [base64.urlsafe_b64encode(x).rstrip(b"=").decode() for x in (body, bare)]
    _refused(_pager(), ALICE, ".".join(b64))
    assert cursor_key(SECRET) != SECRET and len(cursor_key(SECRET)) == 32


def test_a_well_macd_body_of_another_format_is_refused_not_a_crash() -> None:
    """A key shared with another format (a newer replica's) must not make decode raise anything
    but invalid params."""
    key = cursor_key(SECRET)
    for body in (b"7", b"x:y", b"a:b:c", b"\xff:1", f"{DIGEST}:-1".encode()):
        mac = hmac.new(key, ALICE.qualified.encode() + b"\0" + body, hashlib.sha256).digest()[:16]
        cursor = ".".join(base64.urlsafe_b64encode(x).rstrip(b"=").decode() for x in (body, mac))
        _refused(_pager(), ALICE, cursor)


def test_the_config_key_is_from_the_bus_secret_else_the_data_dir(tmp_path: Path) -> None:
    shared = base64.b64encode(SECRET).decode()
    for d in ("one", "two", "alone"):
        (tmp_path / d).mkdir()
    one = load_config(write_config(tmp_path / "one", f'[bus]\nsecret = "{shared}"\n'), {})
    two = load_config(
        write_config(tmp_path / "two", "[bus]\nenabled = false\n"), {"SYMBI_BUS_SECRET": shared}
    )
    assert config_cursor_key(one) == config_cursor_key(two) == cursor_key(SECRET)
    assert not one.bus_secret_path.exists()
    alone = load_config(write_config(tmp_path / "alone", "[bus]\nenabled = false\n"), {})
    key = config_cursor_key(alone)  # made on first use: the same after a restart
    assert key == config_cursor_key(alone) and key != cursor_key(SECRET)
    alone.bus_secret_path.chmod(0o644)  # fail closed: a secret others can read is no secret
    with pytest.raises(ConfigError):
        config_cursor_key(alone)


def _catalog(*names: str) -> Catalog:
    """A snapshot serving ``names`` in this order (one pass-through upstream lists them)."""
    tools = [types.Tool(name=n, input_schema={"type": "object"}) for n in names]
    return Catalog.build([UpstreamListing(name="a", pass_through=True, tools=tools)])


def test_a_snapshot_is_named_by_its_ordered_tool_names() -> None:
    one, other = LiveCatalog({}), LiveCatalog({})
    one.snapshot = _catalog("a__x", "a__y")
    other.snapshot = _catalog("a__x")
    other.snapshot = _catalog("a__x", "a__y")  # another process, another history, the same order
    assert one.digest == other.digest == DIGEST
    assert one.order(DIGEST) == ("a__x", "a__y")
    assert order_digest(["a__y", "a__x"]) != DIGEST  # another order, another name
    assert order_digest(["a__x", "a__y", "a__z"]) != DIGEST


def test_the_live_catalogue_keeps_a_few_replaced_orders_by_digest() -> None:
    live = LiveCatalog({})
    live.snapshot = _catalog("t0")
    first = live.digest
    for i in range(1, LiveCatalog.RETAINED + 1):
        live.snapshot = _catalog(f"t{i}")
        live.snapshot = _catalog(f"t{i}")  # a rebuild that kept the order retains nothing more
    assert live.order(live.digest) == (f"t{LiveCatalog.RETAINED}",)
    assert live.order(first) == ("t0",)  # RETAINED other orders since: still there
    live.snapshot = _catalog("t0", "new")
    assert live.order(first) is None  # once more: gone (the client lists from the start)
    assert live.order(order_digest(["t1"])) == ("t1",)
    assert live.order(order_digest(["never"])) is None
    live.snapshot = _catalog("t1")  # an order served again is current, not also retained
    assert live.order(order_digest(["t1"])) == ("t1",)
    assert live.order(order_digest(["t0", "new"])) == ("t0", "new")
