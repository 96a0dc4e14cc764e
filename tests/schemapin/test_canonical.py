"""Canonical JSON: golden vectors produced by the reference, and every rejection class."""

from __future__ import annotations

import hashlib
import json

import pytest

import schemapin
from schemapin import (
    DocumentTooDeep,
    DocumentTooLarge,
    DuplicateKey,
    InvalidJSON,
    LoneSurrogate,
    NonFiniteNumber,
    UnsupportedValue,
)

from .conftest import ASSETS

VECTORS = json.loads((ASSETS / "canonicalization_vectors.json").read_text(encoding="utf-8"))["vectors"]


def test_at_least_fifteen_vectors() -> None:
    assert len(VECTORS) >= 15
    assert len({v["name"] for v in VECTORS}) == len(VECTORS)


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden_vector(vec: dict[str, str]) -> None:
    obj = schemapin.parse_json(vec["input"])
    canonical = schemapin.canonicalize(obj)
    assert canonical == vec["canonical"].encode("utf-8")
    assert hashlib.sha256(canonical).hexdigest() == vec["sha256"]
    assert schemapin.definition_hash(obj) == vec["sha256"]


def test_one_and_one_point_zero_differ() -> None:
    a = schemapin.parse_json('{"x":1}')
    b = schemapin.parse_json('{"x":1.0}')
    assert schemapin.definition_hash(a) != schemapin.definition_hash(b)


@pytest.mark.parametrize(
    "text,err",
    [
        ('{"a":1,"a":2}', DuplicateKey),
        ('{"o":{"k":1,"k":1}}', DuplicateKey),
        ('{"a":NaN}', NonFiniteNumber),
        ('{"a":Infinity}', NonFiniteNumber),
        ('{"a":-Infinity}', NonFiniteNumber),
        ('{"a":"\\ud800"}', LoneSurrogate),
        ('{"\\udfff":1}', LoneSurrogate),
        ('{"a":', InvalidJSON),
        ("{'a':1}", InvalidJSON),
        ("[" * 100 + "]" * 100, DocumentTooDeep),
        ("[" * 100000 + "]" * 100000, DocumentTooDeep),
    ],
)
def test_parse_rejects(text: str, err: type[Exception]) -> None:
    with pytest.raises(err) as e:
        schemapin.parse_json(text)
    assert isinstance(e.value, schemapin.CanonicalizationFailed)


def test_error_codes_are_distinct_and_stable() -> None:
    codes = {
        c.code
        for c in (
            DuplicateKey,
            NonFiniteNumber,
            LoneSurrogate,
            DocumentTooDeep,
            DocumentTooLarge,
            InvalidJSON,
            UnsupportedValue,
        )
    }
    assert len(codes) == 7
    assert schemapin.CanonicalizationFailed.code == "schema_canonicalization_failed"
    assert DuplicateKey.reference_code == "schema_canonicalization_failed"


def test_size_cap() -> None:
    text = json.dumps({"d": "x" * 2000})
    with pytest.raises(DocumentTooLarge):
        schemapin.parse_json(text, max_bytes=1000)
    with pytest.raises(DocumentTooLarge):
        schemapin.canonicalize(json.loads(text), max_bytes=1000)


def test_invalid_utf8_bytes() -> None:
    with pytest.raises(InvalidJSON):
        schemapin.parse_json(b'{"a":"\xff"}')


@pytest.mark.parametrize(
    "value,err",
    [
        ({"a": float("nan")}, NonFiniteNumber),
        ({"a": float("inf")}, NonFiniteNumber),
        ({"a": "\ud800"}, LoneSurrogate),
        ({1: "x"}, UnsupportedValue),
        ({"a": {1, 2}}, UnsupportedValue),
        ({"a": b"bytes"}, UnsupportedValue),
    ],
)
def test_canonicalize_rejects_non_json_objects(value: object, err: type[Exception]) -> None:
    with pytest.raises(err):
        schemapin.canonicalize(value)


def test_deep_dict_rejected_without_recursion_error() -> None:
    deep: dict[str, object] = {}
    cur = deep
    for _ in range(5000):
        nxt: dict[str, object] = {}
        cur["a"] = nxt
        cur = nxt
    with pytest.raises(DocumentTooDeep):
        schemapin.canonicalize(deep)


def test_canonicalization_field_checked() -> None:
    from schemapin._canonical import require_canonicalization

    require_canonicalization(None)
    require_canonicalization("schemapin-v1")
    with pytest.raises(schemapin.CanonicalizationUnsupported) as e:
        require_canonicalization("jcs")
    assert e.value.code == "canonicalization_unsupported"
