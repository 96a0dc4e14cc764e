"""``gateway.verify.hash_prefix``: what `tools approve --hash` and `discover approve --expect`
accept as the hash or digest the operator reviewed (one check for both)."""

from __future__ import annotations

import pytest

from gateway.verify import MIN_HASH_HEX, hash_prefix

FULL = "ab" * 32


@pytest.mark.parametrize(
    ("given", "taken"),
    [(FULL, FULL), ("ab" * 16, "ab" * 16), ("  " + "AB" * 32 + "\n", FULL), ("aB" * 20, "ab" * 20)],
)
def test_a_long_enough_hex_prefix_is_taken_in_lower_case(given: str, taken: str) -> None:
    assert hash_prefix(given) == taken


@pytest.mark.parametrize(
    "given",
    [
        "",
        FULL[: MIN_HASH_HEX - 1],
        FULL + "a",
        "g" * MIN_HASH_HEX,
        f"sha256:{FULL}",
        FULL[:40] + " " + FULL[:8],
    ],
)
def test_anything_else_is_no_hash(given: str) -> None:
    assert hash_prefix(given) is None
