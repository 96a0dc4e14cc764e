"""The keyword (BM25) half of the RAG pipeline: what a base's index holds, when it is rebuilt,
the size bound, and which chunks a keyword query returns.

Found by mutation testing (group "memory", scripts/mutate.py): nothing checked that a heading is
searchable by keyword, that a query returns only the chunks that contain its keywords, that a
base's index holds that base's chunks only, that it is rebuilt when the base grows and reused
otherwise, that a base without chunks is searched (by vector) without an index, nor the
MAX_BM25_CHUNKS bound. Embedded with the hashing embedder: the vector side is not the subject.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.memory import rag
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.manager import ContextManager
from gateway.memory.rag import RagPipeline, _Bm25Index


def _base(root: Path, name: str, files: dict[str, str]) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for f, text in files.items():
        (d / f).write_text(text)
    return d


def test_a_keyword_query_returns_the_chunks_with_its_words_and_searches_headings() -> None:
    idx = _Bm25Index(
        ["1", "2", "3", "4"],
        [
            {"heading": "Zebra crossings", "text": "where people walk over the road"},
            {"heading": "Parking", "text": "cars wait here for hours"},
            {"heading": "Bicycles", "text": "a lane of their own"},
            {"heading": "Buses", "text": "they stop at the shelter"},
        ],
    )
    top = idx.top(["zebra"], 10)  # a word of a heading only
    assert [i for i, _ in top] == [0] and 0 < top[0][1] <= 1  # a small score is a match too
    assert [i for i, _ in idx.top(["shelter"], 10)] == [3]
    assert idx.top(["absent"], 10) == [] and idx.top([], 10) == []


def test_a_bases_index_holds_its_chunks_only_is_reused_and_rebuilt_when_it_grows(
    tmp_path: Path, manager: ContextManager
) -> None:
    kb = KnowledgeBases(manager)
    kb.add("one", _base(tmp_path, "one", {"a.md": "# Alpha\n\nthe alpha document\n"}))
    kb.add("two", _base(tmp_path, "two", {"b.md": "# Beta\n\nthe beta document\n"}))
    pipeline = RagPipeline(manager)
    first = pipeline._index("one")
    assert first is not None and [p["text"] for p in first.payloads] == ["the alpha document"]
    assert pipeline._index("one") is first  # unchanged base: the index is reused
    kb.add("one", _base(tmp_path, "one", {"c.md": "# Gamma\n\nthe gamma document\n"}))
    grown = pipeline._index("one")
    assert grown is not None and grown is not first
    assert sorted(p["text"] for p in grown.payloads) == ["the alpha document", "the gamma document"]
    two = pipeline._index("two")
    assert two is not None and [p["text"] for p in two.payloads] == ["the beta document"]
    items = pipeline.run("gamma", bases=["one"], top_k=5).items
    assert items and all("/one/" in i.source for i in items)


def test_a_base_without_chunks_has_no_index_and_is_searched_without_one(
    tmp_path: Path, manager: ContextManager
) -> None:
    kb = KnowledgeBases(manager)
    kb.add("full", _base(tmp_path, "full", {"a.md": "# Alpha\n\nthe alpha document\n"}))
    kb.add("empty", _base(tmp_path, "empty", {}))
    pipeline = RagPipeline(manager)
    assert pipeline._index("empty") is None
    assert pipeline.run("alpha", bases=["empty"], top_k=5).items == []
    single = pipeline._index("full")  # one chunk is indexed
    assert single is not None and len(single.ids) == 1


def test_a_base_over_the_bm25_bound_is_searched_by_vector_only(
    tmp_path: Path, manager: ContextManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound itself (200,000 chunks) is lowered to 2 here: the seam is the constant."""
    monkeypatch.setattr(rag, "MAX_BM25_CHUNKS", 2)
    kb = KnowledgeBases(manager)
    kb.add("two", _base(tmp_path, "two", {"a.md": "# A\n\nfirst text\n", "b.md": "# B\n\nsecond text\n"}))
    kb.add("three", _base(tmp_path, "three", {f"{c}.md": f"# {c}\n\n{c} text\n" for c in "xyz"}))
    pipeline = RagPipeline(manager)
    at_bound = pipeline._index("two")
    assert at_bound is not None and len(at_bound.ids) == 2  # exactly the bound: still indexed
    assert pipeline._index("three") is None


def test_a_file_re_ingested_with_new_text_and_as_many_chunks_is_searched_by_its_new_words(
    tmp_path: Path, manager: ContextManager
) -> None:
    """The index was keyed by the chunk count and a counter nothing bumped: a changed file of
    the same size in chunks (re-ingested by `symbi memory ingest`, another process) left
    keyword search on the old text."""
    kb = KnowledgeBases(manager)
    # BM25 scores a word found in half the documents or more at 0: two without it
    other = {"b.md": "# Other\n\nnothing about sea animals\n", "c.md": "# More\n\nstill nothing\n"}
    kb.add("docs", _base(tmp_path, "docs", {"a.md": "# Runbook\n\nrestart the walrus service\n", **other}))
    pipeline = RagPipeline(manager)
    old = pipeline._index("docs")
    assert old is not None and len(old.top(["walrus"], 5)) == 1
    kb.add("docs", _base(tmp_path, "docs", {"a.md": "# Runbook\n\nrestart the narwhal service\n", **other}))
    new = pipeline._index("docs")
    assert new is not None and new is not old
    assert new.top(["walrus"], 5) == [] and len(new.top(["narwhal"], 5)) == 1


def test_a_query_with_no_base_to_search_answers_empty_with_its_analysis(manager: ContextManager) -> None:
    """No base exists or the policy allows none: nothing is searched, and the answer says so."""
    pipeline = RagPipeline(manager)
    r = pipeline.run('where is "the walrus"?', bases=[])
    assert r.query == pipeline.analyse('where is "the walrus"?')
    assert (r.items, r.context, r.citations, r.tokens) == ([], "", [], 0)
    assert list(r.timings_ms) == ["query_analysis"]  # the one stage that ran


def test_a_quoted_phrase_keeps_only_the_chunks_that_contain_it(
    tmp_path: Path, manager: ContextManager
) -> None:
    kb = KnowledgeBases(manager)
    files = {
        "a.md": "# Runbook\n\nrestart the walrus service\n",
        "b.md": "# Notes\n\nthe walrus is not a service we restart\n",
        "c.md": "# More\n\nrestart the narwhal service\n",
    }
    kb.add("docs", _base(tmp_path, "docs", files))
    pipeline = RagPipeline(manager)
    assert len(pipeline.run("restart the walrus service", bases=["docs"]).items) == 3  # unquoted: all
    r = pipeline.run('"Walrus Service" restart', bases=["docs"])
    assert [i.text for i in r.items] == ["restart the walrus service"]
    assert r.tokens == rag.approx_tokens(r.context) > 0  # the one passage's cost


def test_keyword_hits_come_from_each_base_after_one_without_an_index(
    tmp_path: Path, manager: ContextManager
) -> None:
    kb = KnowledgeBases(manager)
    kb.add("empty", _base(tmp_path, "empty", {}))
    other = {f"{c}.md": f"# {c}\n\nnothing about sea animals in {c}\n" for c in "bcdefg"}
    kb.add("docs", _base(tmp_path, "docs", {"a.md": "# Runbook\n\nrestart walrus-42 now\n", **other}))
    pipeline = RagPipeline(manager)
    items = pipeline.run("walrus-42", bases=["empty", "docs"]).items  # an identifier: keywords too
    assert len(items) == 5  # the default top_k, of 7 chunks
    hit = next(i for i in items if i.text == "restart walrus-42 now")
    assert hit.scores.get("bm25", 0.0) > 0
