"""gateway.jsonlimits: the depth, members and key lengths of a JSON document, measured without recursion."""

from __future__ import annotations

from typing import Any

from gateway.jsonlimits import MAX_DEPTH, MAX_KEY_CHARS, NONFINITE, TooLarge, too_large


def nested(n: int) -> Any:
    doc: Any = []
    for _ in range(n - 1):
        doc = [doc]
    return doc


def path_of(found: TooLarge | None) -> str | None:
    return None if found is None else found.path


def test_a_document_at_the_limit_passes_and_one_level_more_is_named() -> None:
    assert too_large(nested(MAX_DEPTH)) is None
    assert path_of(too_large(nested(MAX_DEPTH + 1))) == ("[0]" * MAX_DEPTH)[:200]
    assert path_of(too_large({"a": [{"b": {}}]}, max_depth=3)) == ".a[0].b"
    assert too_large({"a": [{"b": "leaf"}]}, max_depth=3) is None  # scalars are no level


def test_any_depth_is_measured_and_the_path_is_bounded() -> None:
    assert len(path_of(too_large(nested(100_000))) or "") == 200  # no RecursionError, a short path


def test_a_key_past_the_length_limit_is_named_wherever_it_is() -> None:
    assert too_large({"a": [{"k" * MAX_KEY_CHARS: 1}]}) is None
    found = too_large({"a": [{"ok": 1, "k" * (MAX_KEY_CHARS + 1): 1}]})
    assert found is not None and found.path == (".a[0]." + "k" * 200)[:200]
    assert found.problem == f"a key of more than {MAX_KEY_CHARS} characters"
    assert too_large({1: "not a string key", "k" * 9: 2}, max_key_chars=8) == TooLarge(
        "." + "k" * 9, "a key of more than 8 characters"
    )


def test_members_are_counted_across_the_whole_document() -> None:
    doc = {"a": [1, 2, 3], "b": {"c": [4, 5]}}  # 2 + 3 + 1 + 2 members
    assert too_large(doc, max_members=8) is None
    found = too_large(doc, max_members=7)
    assert found is not None and found.problem == "more than 7 members (mcp.max_argument_members)"
    assert too_large({f"k{i}": i for i in range(10)}, max_members=9) == TooLarge(
        "", "more than 9 members (mcp.max_argument_members)"
    )
    assert too_large(doc) is None  # no member limit unless asked


def test_depth_and_members_in_one_walk() -> None:
    found = too_large(nested(MAX_DEPTH + 1), max_members=10**6)
    assert found is not None and found.problem == f"nested deeper than {MAX_DEPTH} levels"
    assert too_large(nested(50), max_members=48) == TooLarge(
        "[0]" * 48, "more than 48 members (mcp.max_argument_members)"
    )  # the 49th list holds the 49th


def test_a_nan_or_an_infinity_is_found_when_asked() -> None:
    doc = {"a": [1.5, {"b": float("nan")}], "c": float("inf")}
    assert too_large(doc) is None  # results are not checked for it (an upstream's own)
    found = too_large(doc, finite=True)
    assert found is not None and found.problem == NONFINITE and found.path in {".a[1].b", ".c"}
    assert too_large({"a": [1e308, -0.0, 10**30]}, finite=True) is None
