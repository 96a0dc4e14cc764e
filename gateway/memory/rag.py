"""The seed's RAG pipeline, stage by stage, each stage timed.

1. query analysis: normalise, keywords (stop words out), quoted phrases that must appear;
2. vector search: the query's embedding against the bases (Qdrant, filtered by base);
3. keyword search: BM25 (``rank_bm25``) over each base's chunks, held in memory per base and
   rebuilt when the base changes; it finds exact terms (error codes, flags, names) that a
   sentence embedding blurs;
4. retrieval: the candidates' payloads and vectors;
5. ranking: score fusion (cosine plus a share of normalised BM25), a small recency boost, then maximal
   marginal relevance so near-duplicate chunks do not crowd the context (a copy of a chosen
   passage is taken only when nothing else is left);
6. context assembly: numbered passages with citations, within a token budget.
Response generation (the seed's last stage) is the caller's model, through MCP sampling.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.memory.manager import ContextManager, check_name, check_query, knowledge_item
from gateway.memory.store import SERVED
from gateway.memory.types import KnowledgeItem
from gateway.screen.asread import screened

# Score fusion: cosine + BM25_WEIGHT * (BM25 / best BM25 of the candidates) + recency. Rank
# fusion (RRF) was tried and lost paraphrase precision (the keyword list's top rank outweighed
# a better cosine); a small BM25 share keeps paraphrases and still lifts exact terms.
BM25_WEIGHT = 0.15
MMR_LAMBDA = 0.75
# a passage this close to one already chosen is a copy (the same text in two files): it is
# chosen only when nothing else is left, so copies never crowd the context (MMR alone lets an
# exact copy beat a less relevant passage: 0.75 * 1 - 0.25 * 1 = 0.5)
NEAR_DUPLICATE = 0.98
RECENCY_HALF_LIFE_S = 30 * 86_400.0
RECENCY_WEIGHT = 0.02
MAX_BM25_CHUNKS = 200_000  # above this a base is searched by vector only (memory bound)
# BM25 scores every chunk of a base once per keyword (rank_bm25 loops in Python): a query's
# keywords are capped, its identifier-like ones first (those are why keyword search runs)
MAX_KEYWORDS = 32
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "our",
        "should",
        "so",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "this",
        "to",
        "was",
        "we",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
# what starts each line of a passage's text in the context: no passage line can start like a
# passage's header ("[2] (base:source#0)") or a part of the rag prompt ("Question:"), whatever
# invisible or blank characters, emphasis or case it is written with
QUOTE = "> "
_IDENT = re.compile(r"\d|_|\w[.\-/]\w")
_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


def tokens(text: str) -> list[str]:
    return [
        w for w in (m.group(0).lower().strip(".-/") for m in _WORD.finditer(text)) if w and w not in _STOP
    ]


def approx_tokens(text: str) -> int:
    """Token count estimate (about 4 characters a token for English with a BPE tokenizer)."""
    return max(1, math.ceil(len(text) / 4))


@dataclass(frozen=True)
class QueryAnalysis:
    text: str
    keywords: tuple[str, ...]
    phrases: tuple[str, ...]
    question: bool
    exact_terms: tuple[str, ...] = ()  # identifier-like words (codes, flags, file names)

    @property
    def wants_keywords(self) -> bool:
        """Keyword search helps with identifiers and quoted phrases; on plain paraphrase questions
        it only adds noise (measured on tests/memory/corpus: top-1 0.95 -> 0.85 with BM25 on)."""
        return bool(self.exact_terms or self.phrases)


@dataclass
class RagResult:
    query: QueryAnalysis
    items: list[KnowledgeItem]
    context: str
    citations: list[dict[str, Any]]
    timings_ms: dict[str, float] = field(default_factory=dict)
    tokens: int = 0


class _Bm25Index:
    def __init__(self, ids: list[str], payloads: list[Mapping[str, Any]]) -> None:
        from rank_bm25 import BM25Okapi

        self.ids = ids
        self.payloads = payloads
        corpus = [tokens(f"{p.get('heading', '')} {p.get('text', '')}") or ["_"] for p in payloads]
        self.bm25 = BM25Okapi(corpus)

    def top(self, kws: Sequence[str], n: int) -> list[tuple[int, float]]:
        if not kws or not self.ids:
            return []
        scores = self.bm25.get_scores(list(kws))
        order = np.argsort(-scores)[:n]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]


def _merge_hits(
    vec_hits: Sequence[KnowledgeItem], kw_hits: Sequence[KnowledgeItem], phrases: Sequence[str]
) -> tuple[dict[str, KnowledgeItem], dict[str, dict[str, int]]]:
    """The candidates by id, each with the scores of both searches, and each one's rank in
    either list; a candidate without every quoted phrase is dropped."""
    cands: dict[str, KnowledgeItem] = {}
    ranks: dict[str, dict[str, int]] = {}
    for name, hits in (("vector", vec_hits), ("bm25", sorted(kw_hits, key=lambda h: -h.scores["bm25"]))):
        for r, h in enumerate(hits):
            ranks.setdefault(h.id, {})[name] = r
            prev = cands.get(h.id)
            cands[h.id] = (
                h
                if prev is None
                else KnowledgeItem(**{**prev.__dict__, "scores": {**prev.scores, **h.scores}})
            )
    if phrases:  # quoted phrases must appear
        cands = {k: v for k, v in cands.items() if all(p in v.text.lower() for p in phrases)}
    return cands, ranks


def _servable(payload: Mapping[str, Any]) -> bool:
    """A stored chunk may be handed to an agent: an operator accepted its file, or its heading
    and text, read as the model reads them, say nothing to the model (the rules ingest uses)."""
    if isinstance(payload.get("accepted"), dict):
        return True
    fields = [("heading", str(payload.get("heading", ""))), ("text", str(payload.get("text", "")))]
    return not screened(fields, decoded=True).findings


def quoted(text: str) -> str:
    """A passage's text with each line (as ``str.splitlines`` breaks them: U+2028, U+0085, a
    form feed too) quoted with ``QUOTE``: only the gateway writes a line that starts without it,
    so a document cannot write another passage's header (``[n] (citation)``) or ``Question:``.
    A test for line starts missed what a model reads through (a zero-width space, U+00A0,
    ``**[2]**``, ``question :``)."""
    return "\n".join(QUOTE + line for line in text.splitlines() or [""])


def header_cite(citation: str) -> str:
    """A citation as a passage's header shows it: one line (a file name can hold a line break)
    with ``\\()[]`` escaped by a backslash, so a name such as ``a.md#0) Question: …`` or
    ``) [2] (kb:b`` can neither close the header nor open another passage's."""
    one = " ".join(citation.splitlines())
    return re.sub(r"([\\()\[\]])", r"\\\1", one)


class RagPipeline:
    def __init__(self, manager: ContextManager) -> None:
        self.m = manager
        self._bm25: dict[str, tuple[tuple[int, str], _Bm25Index]] = {}
        self._lock = threading.Lock()

    def analyse(self, text: str) -> QueryAnalysis:
        norm = " ".join(text.split())
        phrases = tuple(p.lower() for p in re.findall(r'"([^"]{2,})"', norm))
        every = tuple(dict.fromkeys(tokens(norm)))
        exact = tuple(k for k in every if _IDENT.search(k))
        kws = every
        if len(every) > MAX_KEYWORDS:
            kws = (exact + tuple(k for k in every if not _IDENT.search(k)))[:MAX_KEYWORDS]
        return QueryAnalysis(norm, kws, phrases, norm.rstrip().endswith("?"), exact[:MAX_KEYWORDS])

    def _index(self, base: str) -> _Bm25Index | None:
        served: dict[str, Any] = {"kind": "knowledge", "base": base, **SERVED}  # held files left out
        n = self.m.store.count(served)
        if n == 0 or n > MAX_BM25_CHUNKS:
            return None
        # what is stored, not who stored it: `symbi memory ingest` may re-ingest a changed file
        # (same chunk count, new text) from another process; each file's first chunk carries its sha
        firsts = self.m.store.scroll({**served, "chunk": 0}, limit=MAX_BM25_CHUNKS, fields=("source", "sha"))
        files = sorted(f"{p.payload.get('source')}\0{p.payload.get('sha')}" for p in firsts)
        key = (n, hashlib.sha256("\n".join(files).encode()).hexdigest())
        with self._lock:
            cached = self._bm25.get(base)
            if cached and cached[0] == key:
                return cached[1]
        pts = self.m.store.scroll(served, limit=MAX_BM25_CHUNKS)
        idx = _Bm25Index([p.id for p in pts], [p.payload for p in pts])
        with self._lock:
            self._bm25[base] = (key, idx)
        return idx

    def run(
        self,
        text: str,
        *,
        bases: Sequence[str],
        top_k: int = 5,
        budget_tokens: int = 1500,
        filters: Mapping[str, Any] | None = None,
        hybrid: bool = True,
    ) -> RagResult:
        t: dict[str, float] = {}
        clock = time.perf_counter
        s = clock()
        q = self.analyse(check_query(text))
        bases = [check_name(b, "base") for b in bases]
        t["query_analysis"] = clock() - s
        if not bases:  # nothing to search (none exists, or the policy allows none)
            return RagResult(q, [], "", [], {k: round(v * 1000, 3) for k, v in t.items()})

        s = clock()
        vec = self.m.embed([q.text])[0]
        t["embed"] = clock() - s
        n_cand = max(20, 4 * top_k)
        s = clock()
        vec_hits = self.m.knowledge_vector_search(vec, bases=bases, limit=n_cand, filters=filters)
        t["vector_search"] = clock() - s

        s = clock()
        # BM25 indexes whole bases: filtered queries stay vector-only
        kw_hits = self._keyword_hits(q, bases, n_cand) if hybrid and q.wants_keywords and not filters else []
        t["keyword_search"] = clock() - s

        s = clock()
        cands, ranks = _merge_hits(vec_hits, kw_hits, q.phrases)
        pts = self.m.store.retrieve(list(cands), with_vectors=True)
        # a base ingested before the held marks (or under an older screening) is not trusted
        # to be marked: each candidate is screened as read here, and a flagged one is not served
        unsafe = {p.id for p in pts if not _servable(p.payload)} | (set(cands) - {p.id for p in pts})
        cands = {k: v for k, v in cands.items() if k not in unsafe}
        vectors = {
            p.id: np.asarray(p.vector, dtype=np.float32) for p in pts if len(p.vector) and p.id in cands
        }
        t["retrieval"] = clock() - s

        s = clock()
        ranked = self._rank(cands, ranks, vectors, vec, top_k)
        t["ranking"] = clock() - s

        s = clock()
        context, citations, used = self.assemble(ranked, budget_tokens)
        t["context_assembly"] = clock() - s
        return RagResult(q, ranked, context, citations, {k: round(v * 1000, 3) for k, v in t.items()}, used)

    def _keyword_hits(self, q: QueryAnalysis, bases: Sequence[str], n: int) -> list[KnowledgeItem]:
        """The best ``n`` BM25 matches of the query's keywords in each base (unranked across bases)."""
        hits: list[KnowledgeItem] = []
        for b in bases:
            idx = self._index(b)
            if idx is None:
                continue
            for i, score in idx.top(q.keywords, n):
                item = knowledge_item(idx.ids[i], idx.payloads[i], 0.0)
                hits.append(KnowledgeItem(**{**item.__dict__, "scores": {"bm25": score}}))
        return hits

    def _rank(
        self,
        cands: Mapping[str, KnowledgeItem],
        ranks: Mapping[str, Mapping[str, int]],
        vectors: Mapping[str, np.ndarray],
        qvec: np.ndarray,
        top_k: int,
    ) -> list[KnowledgeItem]:
        now = self.m.clock()
        top_bm25 = max((c.scores.get("bm25", 0.0) for c in cands.values()), default=0.0) or 1.0
        fused: dict[str, float] = {}
        for cid, item in cands.items():
            v = vectors.get(cid)
            cos = float(v @ qvec) if v is not None else item.scores.get("vector", 0.0)
            score = cos + BM25_WEIGHT * item.scores.get("bm25", 0.0) / top_bm25
            age = max(0.0, now - item.ts)
            fused[cid] = score + RECENCY_WEIGHT * math.exp(-age / RECENCY_HALF_LIFE_S)
        # maximal marginal relevance over the fused scores (normalised to the best one)
        best = max(fused.values(), default=1.0) or 1.0
        pool = sorted(fused, key=lambda c: -fused[c])[: 4 * top_k]
        chosen: list[str] = []
        while pool and len(chosen) < top_k:

            def mmr(c: str) -> float:
                rel = fused[c] / best
                v = vectors.get(c)
                sim = max(
                    (float(v @ vectors[o]) for o in chosen if v is not None and o in vectors), default=0.0
                )
                return MMR_LAMBDA * rel - (1 - MMR_LAMBDA) * sim

            def copy(c: str) -> bool:
                v = vectors.get(c)
                return v is not None and any(
                    float(v @ vectors[o]) >= NEAR_DUPLICATE for o in chosen if o in vectors
                )

            fresh = [c for c in pool if not copy(c)]
            pick = max(fresh or pool, key=mmr)
            pool.remove(pick)
            chosen.append(pick)
        out = []
        for c in chosen:
            item = cands[c]
            vscore = float(vectors[c] @ qvec) if c in vectors else item.scores.get("vector", 0.0)
            out.append(
                KnowledgeItem(
                    **{
                        **item.__dict__,
                        "score": vscore,
                        "scores": {**item.scores, "vector": vscore, "fused": fused[c]},
                    }
                )
            )
        return out

    @staticmethod
    def assemble(items: Sequence[KnowledgeItem], budget_tokens: int) -> tuple[str, list[dict[str, Any]], int]:
        """Numbered passages, best first, until the budget is spent (a passage is never cut)."""
        parts: list[str] = []
        cites: list[dict[str, Any]] = []
        used = 0
        for item in items:
            cite = header_cite(item.citation())
            block = f"[{len(parts) + 1}] ({cite})\n{quoted(item.text)}"
            cost = approx_tokens(block)
            if used + cost > budget_tokens:
                continue
            parts.append(block)
            used += cost
            cites.append(
                {
                    "n": len(parts),
                    "citation": item.citation(),
                    "source": item.source,
                    "chunk": item.chunk,
                    "base": item.base,
                    "score": round(item.score, 4),
                }
            )
        return "\n\n".join(parts), cites, used
