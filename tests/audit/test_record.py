"""The record format: canonical bytes, chain hash, signature, standalone verification."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.audit.record import (
    CHAIN_PREFIX,
    GENESIS_HASH,
    AuditRecord,
    canonical_details,
    canonical_json,
    chain_hash,
    key_id_of,
    orjson_details,
    record_bytes,
    sign_hash,
    verify_record,
)


def _record(key: Ed25519PrivateKey, details: dict[str, Any], prev: str = GENESIS_HASH) -> AuditRecord:
    kid = key_id_of(key.public_key())
    dj = canonical_details(details)
    canon = record_bytes(
        seq=1,
        id="u-1",
        ts_ns=5,
        principal="p\u00e9",
        agent=None,
        type="tool.call",
        details_json=dj,
        prev_hash=prev,
        key_id=kid,
    )
    h = chain_hash(prev, canon)
    return AuditRecord(1, "u-1", 5, "p\u00e9", None, "tool.call", dj, prev, h, sign_hash(key, h), kid)


def test_spliced_bytes_equal_canonical_json_of_the_record() -> None:
    details = {"z": [1, 2.5, None], "a": {'quote"': "\u00fc\n"}, "b": True}
    spliced = record_bytes(
        seq=7,
        id='i"d',
        ts_ns=123,
        principal=None,
        agent="ag\u00e9nt",
        type="t.x",
        details_json=canonical_details(details),
        prev_hash="ab" * 32,
        key_id="ed25519:00",
    )
    doc = {
        "seq": 7,
        "id": 'i"d',
        "ts_ns": 123,
        "principal": None,
        "agent": "ag\u00e9nt",
        "type": "t.x",
        "details": details,
        "prev_hash": "ab" * 32,
        "key_id": "ed25519:00",
    }
    assert spliced == canonical_json(doc).encode("utf-8")


def test_chain_hash_uses_domain_prefix() -> None:
    import hashlib

    assert chain_hash(GENESIS_HASH, b"{}") == hashlib.sha256(CHAIN_PREFIX + bytes(32) + b"{}").hexdigest()
    assert chain_hash(GENESIS_HASH, b"{}") != hashlib.sha256(bytes(32) + b"{}").hexdigest()


def test_a_record_verifies_alone_and_fails_when_touched() -> None:
    key = Ed25519PrivateKey.generate()
    rec = _record(key, {"tool": "fs__read", "n": 1})
    assert verify_record(rec, key.public_key())
    wire = rec.as_dict()
    assert verify_record(AuditRecord.from_dict(json.loads(json.dumps(wire))), key.public_key())
    wire["details"]["n"] = 2
    assert not verify_record(AuditRecord.from_dict(wire), key.public_key())
    other = Ed25519PrivateKey.generate()
    assert not verify_record(rec, other.public_key())


def test_details_are_frozen_at_emit_and_unserialisable_values_become_text() -> None:
    d = {"path": b"raw", "n": 1}
    text = canonical_details(d)
    d["n"] = 2
    assert json.loads(text) == {"path": "b'raw'", "n": 1}


def test_details_are_canonical_whatever_json_writer_sorted_them() -> None:
    # orjson writes the details; the text must be what from_dict rebuilds from the parsed value
    d = {"b": [1, 2.5, None, True], "a": {"\u00e9": 'x\n"', "A": ""}, "\U0001f600": 0.1, "c": 10**30}
    text = canonical_details(d)
    assert json.loads(text) == d
    assert canonical_details(json.loads(text)) == text
    assert list(json.loads(text)) == sorted(d)


def test_a_lone_surrogate_in_details_is_refused_at_emit_not_in_the_writer() -> None:
    with pytest.raises(ValueError):
        canonical_details({"arg": "\ud800"})


def _signed(key: Ed25519PrivateKey, details_json: str) -> AuditRecord:
    kid = key_id_of(key.public_key())
    canon = record_bytes(
        seq=1,
        id="u-1",
        ts_ns=5,
        principal=None,
        agent=None,
        type="tool.call",
        details_json=details_json,
        prev_hash=GENESIS_HASH,
        key_id=kid,
    )
    h = chain_hash(GENESIS_HASH, canon)
    return AuditRecord(
        1, "u-1", 5, None, None, "tool.call", details_json, GENESIS_HASH, h, sign_hash(key, h), kid
    )


def test_details_text_is_json_dumps_text_whatever_the_floats() -> None:
    # exports are checked by verifiers that rebuild the text with json.dumps: orjson's other
    # float forms (0.00001 for 1e-05, 1e16 for 1e+16) must never be stored
    for x in (1e-05, -2.5e-07, 1e16, -1.5e300, 5e-324, 0.0001, 123.456, 0.0, 1e15):
        for d in ({"x": x}, {"a": [1, x], "b": {"c": [x]}}, {"s": ",3e4 0.00001", "x": x}):
            assert canonical_details(d) == canonical_json(d)


def test_an_export_of_a_record_stored_in_orjson_float_form_still_verifies() -> None:
    # records stored while the writer kept orjson's float text (0.00001): their exports verify
    key = Ed25519PrivateKey.generate()
    details = {"duration_ms": 1e-05, "big": 1e16, "n": 1}
    stored = orjson_details(details)
    assert stored is not None and stored != canonical_json(details)
    old = _signed(key, stored)
    line = json.loads(json.dumps(old.as_dict()))
    again = AuditRecord.from_dict(line)
    assert again.details_json == old.details_json
    assert verify_record(again, key.public_key())
    # the fallback accepts another text of the SAME value only: a changed value still fails
    line["details"]["duration_ms"] = 2e-05
    assert not verify_record(AuditRecord.from_dict(line), key.public_key())
    new = _signed(key, canonical_details(details))
    assert verify_record(AuditRecord.from_dict(json.loads(json.dumps(new.as_dict()))), key.public_key())


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e-05, 0.0001, 1e16, 9999999999999998.0, -0.0, 5e-324, 1.5e300])
    | st.text()
    | st.sampled_from([",3e4", ":1e-05", "[0.00001", '\u2028\x7f\x1f"\\/', "0.0000"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=6))
def test_details_text_is_json_dumps_text_for_any_json_value(details: dict[str, Any]) -> None:
    # orjson's text is kept without searching it when the values are plain (gateway.audit.record._plain):
    # it must then be json.dumps's, byte for byte, as it is when the search sends it to json
    assert canonical_details(details) == canonical_json(details)


def test_cut_keeps_the_start_a_digest_and_the_count_of_what_it_leaves_out() -> None:
    import hashlib

    from gateway.audit.record import CUT_CHARS, MEMBERS_KEPT, VALUE_CHARS, cut

    big = "a" * (VALUE_CHARS + 5)
    out = cut(
        {
            "s": big,
            "short": "ok",
            "n": 7,
            "list": list(range(MEMBERS_KEPT + 3)),
            "map": {str(i): i for i in range(MEMBERS_KEPT + 1)},
        }
    )
    assert out["s"].startswith("a" * VALUE_CHARS) and "5 more characters" in out["s"]
    assert hashlib.sha256(big.encode()).hexdigest() in out["s"]
    assert (out["short"], out["n"]) == ("ok", 7)
    assert out["list"][:MEMBERS_KEPT] == list(range(MEMBERS_KEPT)) and "3 more items" in out["list"][-1]
    assert len(out["map"]) == MEMBERS_KEPT + 1 and out["map"]["[not recorded]"] == "1 more members"
    # the strings kept in all are bounded, however the document nests
    wide = cut({"a": [["x" * VALUE_CHARS] * MEMBERS_KEPT] * MEMBERS_KEPT})
    assert len(json.dumps(wide)) < 2 * CUT_CHARS + 100 * MEMBERS_KEPT
