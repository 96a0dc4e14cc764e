"""Volatile memory's metadata filters (found by mutation testing, group "memory"): a filter
value must match, a list is any of its values, a missing key does not match."""

from __future__ import annotations

from gateway.memory.volatile import _meta_ok


def test_metadata_filters() -> None:
    assert _meta_ok({"a": 1}, None) and _meta_ok({"a": 1}, {})
    assert _meta_ok({"a": 1, "b": "x"}, {"a": 1, "b": "x"})
    assert not _meta_ok({"a": 1}, {"a": 2})
    assert _meta_ok({"a": 1}, {"a": [1, 2]}) and _meta_ok({"a": 2}, {"a": (1, 2)})
    assert not _meta_ok({"a": 3}, {"a": [1, 2]})
    assert not _meta_ok({}, {"a": 1}) and not _meta_ok({"b": 1}, {"a": [1]})
