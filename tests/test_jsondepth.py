"""gateway.jsondepth: the depth of a JSON document, measured without recursion."""

from __future__ import annotations

from typing import Any

from gateway.jsondepth import MAX_DEPTH, too_deep


def nested(n: int) -> Any:
    doc: Any = []
    for _ in range(n - 1):
        doc = [doc]
    return doc


def test_a_document_at_the_limit_passes_and_one_level_more_is_named() -> None:
    assert too_deep(nested(MAX_DEPTH)) is None
    assert too_deep(nested(MAX_DEPTH + 1)) == ("[0]" * MAX_DEPTH)[:200]
    assert too_deep({"a": [{"b": {}}]}, limit=3) == ".a[0].b"
    assert too_deep({"a": [{"b": "leaf"}]}, limit=3) is None  # scalars are no level


def test_any_depth_is_measured_and_the_path_is_bounded() -> None:
    assert len(too_deep(nested(100_000)) or "") == 200  # no RecursionError, a short path
