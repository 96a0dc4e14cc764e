"""Verified tools only: SchemaPin in the gateway, drift detection, approvals.

``gateway.verify.verifier.ToolVerifier`` (imported where needed: it pulls in the MCP SDK,
which the CLI's light commands should not pay for), ``gateway.verify.state`` (the tool
state store) and ``gateway.verify.manifest`` (signed approved manifests).
"""

# The shortest definition hash an approval may name: 128 bits. The upstream writes both the
# bait and the switch, so it needs only a collision of the prefix, not a preimage: 12 hex
# digits (48 bits) fall to about 2**24 tries of each. (Here, not in gateway.verify.approve:
# `symbi tools approve --help` prints it without importing the approval code.)
MIN_HASH_HEX = 32
_HEX = frozenset("0123456789abcdef")


def hash_prefix(given: str) -> str | None:
    """``given`` as an approval may name a hash or digest (``MIN_HASH_HEX`` to 64 hex digits,
    any case, spaces around), lower case; None when it is not one."""
    h = given.strip().lower()
    if MIN_HASH_HEX <= len(h) <= 64 and set(h) <= _HEX:
        return h
    return None
