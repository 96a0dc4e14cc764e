"""``gateway.server.fastlane.inexact``: which messages both lanes leave to the SDK because
orjson would read a number in them otherwise than the SDK's parser (pydantic's) does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter

from gateway.server.fastlane import inexact


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (b"123456789012345678901234567890", True),
        (b"-9223372036854775809", True),
        (b"18446744073709551616", True),
        (b"18446744073709551615", False),  # orjson reads it exactly
        (b"-9223372036854775808", False),
        (b"1e18", False),
        (b'"1234567890123456789012"', False),  # digits of a string
        (b"0.1234567890123456789", False),  # a long decimal: both parsers round it alike
        (b"-12345678901234567890.123456789e-300", False),
    ],
)
def test_inexact_finds_what_orjson_reads_as_a_float_past_64_bits(number: bytes, expected: bool) -> None:
    raw = b'{"params":{"arguments":{"a":[1,{"n":%s}]}}}' % number
    msg = orjson.loads(raw)
    assert inexact(raw, msg) is expected
    # what the lane takes, it reads as the SDK's parser (pydantic's) does
    assert (repr(msg) == repr(TypeAdapter(Any).validate_json(raw))) is not expected  # (2.0**64 == 2**64)
    # deeper than Python's recursion limit (orjson reads 1024 levels): no RecursionError
    deep = b"[" * 1023 + number + b"]" * 1023
    assert inexact(deep, orjson.loads(deep)) is expected
