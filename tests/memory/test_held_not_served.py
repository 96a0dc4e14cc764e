"""Attack (session 43): a knowledge file held by the newer screening was still served.

A file ingested before the screening read through formatting (``screened:1``), unchanged
since, that only that reading flags is kept as stored and reported as held by ``symbi
knowledge add`` (never deleted silently: the reading can misread code). It was still handed to
every agent by ``knowledge__context`` and ``knowledge__search`` until the operator acted. Its
chunks are marked held now, and no search serves them; accepting it (``--accept-flagged``, as
``knowledge add`` says) serves it again, and removing it removes it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import types

from gateway.memory import knowledge
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.store import HELD
from tests.memory.test_gateway_memory import ALICE, _config, call, gateway
from tests.memory.test_rescreen_keeps import SPLIT

pytestmark = pytest.mark.anyio


def _text(r: types.CallToolResult) -> str:
    block = r.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


OFFICE = "# Office\nThe travel desk sits on the third floor; the card number is kept by finance.\n"
QUERY = "travel desk previous instructions reply card number"


def _old_base(cfg: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, files: int = 2) -> None:
    """``docs`` stored as a gateway of session 42 stored it: under the screening as written."""
    from gateway.config.load import load_config
    from gateway.events import LoggingSink
    from gateway.memory.build import build_manager

    monkeypatch.setattr(knowledge, "SCREENED", knowledge.SCREENED_WRITTEN)
    monkeypatch.setattr(knowledge, "_screened_parts", lambda text: ([], []))
    m = build_manager(load_config(cfg, {}), LoggingSink())
    try:
        assert len(KnowledgeBases(m).add("hr", docs).added) == files
    finally:
        m.close()
    monkeypatch.undo()


def _two_files_in_an_old_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> tuple[Path, Path]:
    """(config, docs): travel.md (SPLIT, injected) and office.md (clean) ingested unscreened."""
    cfg = _config(tmp_path, f'embedded_store = "{store}"')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "travel.md").write_text(SPLIT)
    (docs / "office.md").write_text(OFFICE)
    _old_base(cfg, docs, monkeypatch)
    return cfg, docs


@pytest.mark.parametrize("store", ["edge", "local"])
async def test_a_held_file_is_not_served_to_agents_until_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    cfg, docs = _two_files_in_an_old_base(tmp_path, monkeypatch, store)
    async with gateway(cfg) as gw:
        kb: KnowledgeBases = gw.builtins["knowledge"].s.kb  # type: ignore[attr-defined]
        before = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        assert "Ig**nore**" not in _text(before)  # screened as read when served, before any add
        rep = kb.add("hr", docs)
        assert list(rep.held) == [str(docs / "travel.md")]
        ctx = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        found = await call(gw, ALICE, "knowledge__search", query=QUERY, base="hr")
        for got in (ctx, found):
            text = _text(got)
            assert "Ig**nore**" not in text and "travel.md" not in text
            assert "third floor" in text  # the other file still is
        # kept for the operator: still in the base, still reported
        assert kb.list()["hr"]["files"] == 2
        assert list(kb.add("hr", docs).held) == [str(docs / "travel.md")]
        # what `knowledge add` says to do: accept it (its rules, in that one file)
        rules = frozenset(rule for rule, _ in knowledge._screened_parts(SPLIT)[1])
        accepted = kb.add("hr", docs / "travel.md", accept_flagged=rules)
        assert list(accepted.accepted) == [str(docs / "travel.md")]
        after = await call(gw, ALICE, "knowledge__context", query=QUERY, bases=["hr"])
        assert "Ig**nore**" in _text(after)


@pytest.mark.parametrize("store", ["edge", "local"])
async def test_an_old_base_never_added_again_does_not_serve_its_injected_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """No ``knowledge add`` since the base was written (no held marks): the running gateway
    does not hand the injected file to an agent; the clean one it still does."""
    cfg, docs = _two_files_in_an_old_base(tmp_path, monkeypatch, store)
    async with gateway(cfg) as gw:
        for q in (QUERY, 'travel "card number"'):
            ctx = _text(await call(gw, ALICE, "knowledge__context", query=q, bases=["hr"]))
            found = _text(await call(gw, ALICE, "knowledge__search", query=q, base="hr"))
            for text in (ctx, found):
                assert "Ig**nore**" not in text and "travel.md" not in text
        clean = _text(await call(gw, ALICE, "knowledge__context", query="travel desk floor", bases=["hr"]))
        assert "third floor" in clean


CODES = "# Codes\nThe expense code TRV-2041 is for rail tickets.\n"


@pytest.mark.parametrize("store", ["edge", "local"])
async def test_a_held_mark_is_honoured_by_keyword_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str
) -> None:
    """A held chunk found by BM25 only (an identifier-like term turns keyword search on) is not
    served: the mark, not the text, holds it here (the text is clean)."""
    cfg = _config(tmp_path, f'embedded_store = "{store}"')
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "codes.md").write_text(CODES)
    (docs / "office.md").write_text(OFFICE)
    for i, topic in enumerate(("parking", "canteen", "badges")):  # BM25 scores a term in half the files 0
        (docs / f"{topic}.md").write_text(f"# {topic.title()}\nAsk reception about {topic} on floor {i}.\n")
    _old_base(cfg, docs, monkeypatch, 5)
    async with gateway(cfg) as gw:
        kb: KnowledgeBases = gw.builtins["knowledge"].s.kb  # type: ignore[attr-defined]
        rag = gw.builtins["knowledge"].s.rag  # type: ignore[attr-defined]
        assert rag.analyse("TRV-2041").wants_keywords
        served = _text(await call(gw, ALICE, "knowledge__search", query="TRV-2041", base="hr"))
        assert "TRV-2041" in served  # found before it is marked
        kb.m.store.set_payload({"kind": "knowledge", "base": "hr", "source": str(docs / "codes.md")}, HELD)
        # vector search alone would not find it: its own filter is checked apart
        hits = kb.m.knowledge_vector_search(kb.m.embed(["TRV-2041"])[0], bases=["hr"], limit=20)
        assert all("TRV-2041" not in h.text for h in hits)
        for tool, args in (("knowledge__search", {"base": "hr"}), ("knowledge__context", {"bases": ["hr"]})):
            got = _text(await call(gw, ALICE, tool, query="TRV-2041", **args))
            assert "TRV-2041" not in got
