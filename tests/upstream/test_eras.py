"""``on_behalf_of``: while an upstream call runs, the caller is the relay's target and a
2026-era upstream sees its capabilities; after it (also when it fails), neither. The upstream
and the caller's request context are stand-ins (``SimpleNamespace``) holding only the relay
(real) and the session and request id the context manager reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gateway.upstream.caller_caps import DOWNSTREAM_CAPABILITIES
from gateway.upstream.eras import on_behalf_of
from gateway.upstream.relay import CallerRelay


class _Session:  # a weakref-able stand-in for the caller's ServerSession
    pass


def test_the_caller_is_registered_only_while_the_call_runs() -> None:
    relay = CallerRelay("up")
    up = SimpleNamespace(relay=relay)
    session = _Session()
    ctx = SimpleNamespace(session=session, request_id=7)
    before = DOWNSTREAM_CAPABILITIES.get()
    with on_behalf_of(up, ctx):  # type: ignore[arg-type]
        assert relay.in_flight == 1
        assert DOWNSTREAM_CAPABILITIES.get()() is session
        with on_behalf_of(up, ctx):  # type: ignore[arg-type]  # nested calls: both registered
            assert relay.in_flight == 2
        assert relay.in_flight == 1 and DOWNSTREAM_CAPABILITIES.get()() is session
    assert relay.in_flight == 0 and DOWNSTREAM_CAPABILITIES.get() is before
    with pytest.raises(RuntimeError), on_behalf_of(up, ctx):  # type: ignore[arg-type]
        raise RuntimeError("the call failed")
    assert relay.in_flight == 0 and DOWNSTREAM_CAPABILITIES.get() is before
    with on_behalf_of(up, None):  # type: ignore[arg-type]  # no caller: nothing to relay to
        assert relay.in_flight == 0 and DOWNSTREAM_CAPABILITIES.get() is None
