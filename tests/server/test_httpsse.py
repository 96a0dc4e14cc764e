"""``gateway.server.httpsse``'s own encoding of the SDK's priming event: the bytes
sse-starlette's ``ensure_bytes`` makes of it, for every shape (its own encoder for the rest)."""

from __future__ import annotations

from typing import Any

import pytest
from sse_starlette.event import ensure_bytes

from gateway.server.httpsse import SEP, priming_bytes


@pytest.mark.parametrize(
    "event",
    [
        {"id": "AbCdEf-_0123456789", "data": ""},  # no retry interval configured
        {"id": "AbCdEf-_0123456789", "data": "", "retry": 1000},  # the gateway's (http.py)
        {"id": "é", "data": "", "retry": 0},  # not ASCII: UTF-8, as the encoder's buffer
        {"id": "a\rb", "data": "", "retry": 5},  # line breaks: the encoder strips them
        {"id": "a\nb", "data": "", "retry": 5},
        {"id": "a\r\nb", "data": ""},
        {"id": "x", "data": "", "retry": None},  # an explicit None: no retry line
        {"id": "x", "data": "", "retry": True},  # not an int: the encoder writes what it gets
        {"id": "x", "data": "two\nlines"},  # data that is not the priming event's
        {"id": "x", "data": "", "event": "message"},  # a key the priming event has not
        {"id": 7, "data": ""},  # an id that is not text: the encoder's error, or its bytes
    ],
)
def test_the_priming_event_is_the_bytes_sse_starlette_makes(event: dict[str, Any]) -> None:
    try:
        expected: bytes | type[BaseException] = ensure_bytes(event, SEP)
    except TypeError as e:  # an event the encoder refuses is refused the same way
        expected = type(e)
    if isinstance(expected, bytes):
        assert priming_bytes(event) == expected
    else:
        with pytest.raises(expected):
            priming_bytes(event)
