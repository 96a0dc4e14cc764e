"""``SecureMessage`` as stored: fields parsed strictly (a malformed or non-canonical entry is a
``ValueError``, which the receiver rejects as unreadable), the header canonical, and what is
signed length-prefixed."""

from __future__ import annotations

import json

import pytest

from gateway.bus.message import SecureMessage, header_bytes, signed_bytes

HEAD = [1, "id-1", "ag-a", "ag-b", None, "direct", 1000, 2000, "id-0", None]


def _fields(head: object, **kw: bytes) -> dict[str, bytes]:
    h = head if isinstance(head, bytes) else json.dumps(head, separators=(",", ":")).encode()
    return {"h": h, "n": b"n" * 12, "c": b"ct", "s": b"sig", **kw}


def test_stored_fields_round_trip_with_str_or_bytes_keys() -> None:
    msg = SecureMessage.from_fields(_fields(HEAD))
    assert (msg.id, msg.sender, msg.recipient, msg.topic, msg.kind) == (
        "id-1",
        "ag-a",
        "ag-b",
        None,
        "direct",
    )
    assert (msg.timestamp_ms, msg.expires_ms, msg.prev, msg.reply_to) == (1000, 2000, "id-0", None)
    assert (msg.nonce, msg.ciphertext, msg.signature) == (b"n" * 12, b"ct", b"sig")
    assert msg.to_fields() == _fields(HEAD)
    # Redis hands the fields back with bytes keys
    assert SecureMessage.from_fields({k.encode(): v for k, v in _fields(HEAD).items()}) == msg
    assert msg.header() == header_bytes(*HEAD[1:])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "head",
    [
        b"not json",
        {"id": "x"},  # not a list
        HEAD[:9],  # a field missing
        [*HEAD, "extra"],
        [2, *HEAD[1:]],  # another version
        [*HEAD[:5], "broadcast", *HEAD[6:]],  # an unknown kind
        [*HEAD[:6], "1000", *HEAD[7:]],  # a timestamp that is not an integer
        [*HEAD[:7], 2000.5, *HEAD[8:]],  # an expiry that is not an integer
    ],
)
def test_a_malformed_header_is_refused(head: object) -> None:
    with pytest.raises(ValueError):
        SecureMessage.from_fields(_fields(head))


def test_a_non_canonical_header_is_refused() -> None:
    """The same values spelled otherwise (spaces, escapes) would verify against the canonical
    bytes while the stored bytes differ: refused."""
    with pytest.raises(ValueError):
        SecureMessage.from_fields(_fields(json.dumps(HEAD).encode()))  # ", " separators
    with pytest.raises(ValueError):
        SecureMessage.from_fields(
            _fields(b'[1,"id\\u002d1","ag-a","ag-b",null,"direct",1000,2000,"id-0",null]')
        )


@pytest.mark.parametrize("missing", ["h", "n", "c", "s"])
def test_a_missing_field_is_refused(missing: str) -> None:
    f = _fields(HEAD)
    del f[missing]
    with pytest.raises(ValueError):
        SecureMessage.from_fields(f)


def test_a_field_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        SecureMessage.from_fields({**_fields(HEAD), "n": "text"})  # type: ignore[arg-type]  # a str field: the point


def test_what_is_signed_is_tagged_and_length_prefixed() -> None:
    hb = header_bytes(*HEAD[1:])  # type: ignore[arg-type]
    assert signed_bytes(hb, b"N", b"C") == b"symbi-bus/v1\0" + len(hb).to_bytes(4, "big") + hb + b"NC"
    # a byte moved from the header into the nonce changes what is signed
    assert signed_bytes(hb[:-1], hb[-1:] + b"N", b"C") != signed_bytes(hb, b"N", b"C")
    msg = SecureMessage.from_fields(_fields(HEAD))
    assert msg.signed_bytes() == signed_bytes(msg.header(), msg.nonce, msg.ciphertext)
    assert json.loads(hb) == HEAD and b" " not in hb
