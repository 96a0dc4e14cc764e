"""Metadata filters. Volatile memory's (found by mutation testing, group "memory"): a filter
value must match, a list is any of its values, a missing key does not match. And a true/false
value, through the real gateway on each embedded store: a bool matches only that bool."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.memory.volatile import _meta_ok
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway


def test_metadata_filters() -> None:
    assert _meta_ok({"a": 1}, None) and _meta_ok({"a": 1}, {})
    assert _meta_ok({"a": 1, "b": "x"}, {"a": 1, "b": "x"})
    assert not _meta_ok({"a": 1}, {"a": 2})
    assert _meta_ok({"a": 1}, {"a": [1, 2]}) and _meta_ok({"a": 2}, {"a": (1, 2)})
    assert not _meta_ok({"a": 3}, {"a": [1, 2]})
    assert not _meta_ok({}, {"a": 1}) and not _meta_ok({"b": 1}, {"a": [1]})
    assert not _meta_ok({"a": True}, {"a": 1}) and not _meta_ok({"a": 0}, {"a": False})


# -- true/false metadata through the real gateway, on each embedded store -------------------

STORES = ("edge", "local")  # the Qdrant server path cannot run here; it shares ``qdrant_filter``


def _gateway(tmp_path: Path, store: str) -> AbstractAsyncContextManager[Gateway]:
    return gateway(_config(tmp_path, f'embedded_store = "{store}"'))


async def _call(gw: Gateway, tool: str, **args: Any) -> dict[str, Any]:
    r = await call(gw, ALICE, tool, **args)
    assert not r.is_error
    out: dict[str, Any] = r.structured_content or {}
    return out


@pytest.mark.anyio
@pytest.mark.parametrize("store", STORES)
async def test_a_true_false_filter_finds_its_memories_on_every_store(tmp_path: Path, store: str) -> None:
    """Qdrant Edge's binding read a Python ``True`` as the integer 1: ``{"flag": true}`` found
    nothing stored with ``flag: true`` (and found ``flag: 1``); volatile memory found both."""
    where = {
        "long_term": {},
        "shared": {"namespace": "team"},
        "short_term": {},
        "working": {"task": "t1"},
    }
    async with _gateway(tmp_path, store) as gw:
        for mtype, extra in where.items():
            for value in (True, False, 1, 0):
                text = f"{mtype} apples flag {value!r} {type(value).__name__}"
                await _call(gw, "memory__store", text=text, type=mtype, metadata={"flag": value}, **extra)
        for mtype, extra in where.items():
            scope = {"namespaces": ["team"]} if mtype == "shared" else dict(extra)
            for value in (True, False, 1, 0):
                got = await _call(
                    gw,
                    "memory__recall",
                    query="apples flag",
                    types=[mtype],
                    top_k=10,
                    filters={"flag": value},
                    **scope,
                )
                found = [(i["metadata"]["flag"], type(i["metadata"]["flag"])) for i in got["items"]]
                assert found == [(value, type(value))], (mtype, value)


@pytest.mark.anyio
@pytest.mark.parametrize("store", STORES)
async def test_a_true_false_front_matter_filter_finds_its_knowledge(tmp_path: Path, store: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, reviewed in (("yes", "true"), ("no", "false")):
        (docs / f"{name}.md").write_text(f"---\nreviewed: {reviewed}\n---\n# Bikes\nBikes go in the cage.\n")
    async with _gateway(tmp_path, store) as gw:
        gw.builtins["knowledge"].s.kb.add("handbook", docs, glob="*.md")  # type: ignore[attr-defined]
        for value, file in ((True, "yes.md"), (False, "no.md")):
            got = await _call(
                gw, "knowledge__search", base="handbook", query="bikes", filters={"reviewed": value}
            )
            assert [Path(i["source"]).name for i in got["items"]] == [file], value
