"""Agent memory and knowledge: vector search, retrieval, updates, RAG, ingestion, footprint.

    .venv/bin/python bench/context.py                    # 100k vectors (a few minutes)
    .venv/bin/python bench/context.py --sizes 100000,1000000   # 1M too (~10 min build, ~6 GB RAM)

Prints one JSON document. The vectors are synthetic (384-d, clustered with a low intrinsic
dimension like sentence embeddings: embedding 100k real texts with the local model would take
~10 minutes on 2 cores); the payload is ``{agent: agent-<i % 100>, kind, ts}``, so the agent
filter keeps 1%. The baseline, measured in the same run on the same data, is exact search
(numpy float32, recall 1.0) and qdrant-client's local mode (brute force). Recall@10 is
against exact search. Retrieval, RAG and ingestion use the real local model on the test corpus.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread per search for every engine here
os.environ.setdefault("OMP_NUM_THREADS", "1")
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# bench/ is sys.path[0] when run as a script; its http.py would shadow the stdlib's
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from gateway.memory.embed import OnnxMiniLM
from gateway.memory.knowledge import KnowledgeBases
from gateway.memory.manager import ContextManager
from gateway.memory.rag import RagPipeline
from gateway.memory.store import CollectionSpec, EdgeStore, Point, QdrantClientStore, VectorStore
from gateway.memory.types import AgentContext, ContextQuery

DIM = 384
AGENTS = 100
CORPUS = ROOT / "tests/memory/corpus"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p / 100 * len(s)))], 3)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """2000 clusters in a 32-d latent space projected to 384-d, plus noise; unit length."""
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(32, DIM)).astype(np.float32)
    centres = rng.normal(size=(2000, 32)).astype(np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    for i in range(0, n, 50_000):
        k = min(50_000, n - i)
        lat = centres[rng.integers(0, 2000, k)] + 0.35 * rng.normal(size=(k, 32)).astype(np.float32)
        out[i : i + k] = lat @ proj + 0.5 * rng.normal(size=(k, DIM)).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def du_mb(path: Path) -> float:
    """Blocks really used (the WAL preallocates sparse files: their apparent size is not disk)."""
    return sum(f.stat().st_blocks * 512 for f in path.rglob("*") if f.is_file()) / 1e6


def load(store: VectorStore, data: np.ndarray, batch: int = 2000) -> float:
    t = time.perf_counter()
    for i in range(0, len(data), batch):
        store.upsert(
            [
                Point(
                    str(_uuid(j)),
                    data[j].tolist(),
                    {"agent": f"agent-{j % AGENTS}", "kind": "memory", "ts": float(j)},
                )
                for j in range(i, min(len(data), i + batch))
            ]
        )
    return len(data) / (time.perf_counter() - t)


def _uuid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


def search_stats(
    store: VectorStore, data: np.ndarray, queries: np.ndarray, *, filtered: bool
) -> dict[str, Any]:
    """All searches first (timed, back to back), then recall against exact search."""
    lat, found = [], []
    for qi, q in enumerate(queries):
        flt = {"agent": f"agent-{qi % AGENTS}"} if filtered else None
        v = q.tolist()
        t = time.perf_counter()
        hits = store.search(v, limit=10, filter=flt)
        lat.append((time.perf_counter() - t) * 1000)
        found.append({h.id for h in hits})
    agents = np.arange(len(data)) % AGENTS
    recalls = []
    for qi, q in enumerate(queries):
        scores = data @ q
        if filtered:
            scores = np.where(agents == qi % AGENTS, scores, -np.inf)
        truth = {_uuid(int(i)) for i in np.argpartition(-scores, 10)[:10]}
        recalls.append(len(truth & found[qi]) / 10)
    return {
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "mean_ms": round(statistics.mean(lat), 3),
        "recall_at_10": round(statistics.mean(recalls), 4),
        "queries": len(queries),
    }


def exact_numpy(data: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    lat = []
    for q in queries:
        t = time.perf_counter()
        np.argpartition(-(data @ q), 10)[:10]
        lat.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "recall_at_10": 1.0}


def bench_edge(n: int, data: np.ndarray, queries: np.ndarray, work: Path, quant: str) -> dict[str, Any]:
    spec = CollectionSpec("bench", DIM, "synthetic", quantization=quant)
    before = rss_mb()
    s = EdgeStore(spec, work / f"edge-{quant}-{n}", search_threads=1)
    ins = load(s, data)
    t = time.perf_counter()
    s.optimize()
    build = time.perf_counter() - t
    total, indexed = s.indexed()
    out: dict[str, Any] = {
        "insert_pts_per_s": round(ins),
        "hnsw_build_s": round(build, 1),
        "indexed": indexed,
        "points": total,
    }
    out["unfiltered"] = search_stats(s, data, queries, filtered=False)
    out["filtered_by_agent"] = search_stats(s, data, queries, filtered=True)
    # an update visible to the next search: upsert a point, search until it is the top hit
    vis = []
    for k in range(20):
        v = queries[k]
        pid = _uuid(n + k)
        t = time.perf_counter()
        s.upsert([Point(pid, v.tolist(), {"agent": "agent-0", "kind": "memory", "ts": 0.0})])
        while s.search(v.tolist(), limit=1)[0].id != pid:
            pass
        vis.append((time.perf_counter() - t) * 1000)
    out["update_visible_ms"] = {"p50": pct(vis, 50), "p99": pct(vis, 99)}
    s.close()
    shard = work / f"edge-{quant}-{n}" / "shard"
    out["disk_mb"] = {"segments": round(du_mb(shard / "segments"), 1), "wal": round(du_mb(shard / "wal"), 1)}
    out["rss_delta_mb"] = round(rss_mb() - before, 1)
    out["per_1m_vectors"] = {
        "disk_gb_segments": round(out["disk_mb"]["segments"] * 1e6 / n / 1000, 2),
        "rss_gb": round(out["rss_delta_mb"] * 1e6 / n / 1000, 2),
    }
    return out


LOCAL_MAX = 20_000  # local mode inserts are O(n^2) (np.append per point): beyond this it takes many minutes


def bench_local(n: int, data: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    """qdrant-client local mode on the first ``min(n, LOCAL_MAX)`` points (its search is linear in n)."""
    k = min(n, LOCAL_MAX)
    s = QdrantClientStore(CollectionSpec("bench", DIM, "synthetic"), path=":memory:")
    ins = load(s, data[:k])
    few = queries[:10]
    out = {
        "points": k,
        "insert_pts_per_s": round(ins),
        "unfiltered": search_stats(s, data[:k], few, filtered=False),
        "filtered_by_agent": search_stats(s, data[:k], few, filtered=True),
    }
    s.close()
    return out


def bench_pipeline(work: Path) -> dict[str, Any]:
    """Retrieval, RAG and ingestion with the real local model on the test corpus."""
    emb = OnnxMiniLM()
    spec = CollectionSpec("rag", DIM, emb.id)
    m = ContextManager(lambda: EdgeStore(spec, work / "rag"), lambda: emb)
    # ingestion: the corpus copied 20 times with a marker so every chunk is distinct
    docs = work / "docs"
    for k in range(20):
        for f in CORPUS.glob("*.md"):
            (docs / str(k)).mkdir(parents=True, exist_ok=True)
            (docs / str(k) / f.name).write_text(f.read_text().replace("# ", f"# copy {k} ", 1))
    rep = KnowledgeBases(m).add("handbook", docs, glob="**/*.md")
    m.store.optimize()
    for i in range(2000):
        m.store_context(
            f"agent-{i % 20}", AgentContext(f"note {i}: the build on runner {i % 37} took {i % 90} minutes")
        )
    questions = [q for q, _, _ in json.loads((CORPUS / "questions.json").read_text())]
    ret, rag_total, stages = [], [], []
    rag = RagPipeline(m)
    for q in questions * 2:
        t = time.perf_counter()
        m.retrieve_context("agent-3", ContextQuery(q, memory_types=("long_term",), top_k=5))
        ret.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        res = rag.run(q, bases=["handbook"], top_k=8, budget_tokens=1500)
        rag_total.append((time.perf_counter() - t) * 1000)
        stages.append(res.timings_ms)
    m.close()
    return {
        "ingestion": {
            "files": len(rep.added),
            "chunks": rep.chunks,
            "chunks_per_s": round(rep.chunks / rep.seconds, 1),
        },
        "retrieval_end_to_end_ms": {
            "mean": round(statistics.mean(ret), 3),
            "p50": pct(ret, 50),
            "p99": pct(ret, 99),
            "note": "embed the query + filtered vector search, long-term memory of one agent",
        },
        "rag_end_to_end_ms": {
            "mean": round(statistics.mean(rag_total), 3),
            "p50": pct(rag_total, 50),
            "p99": pct(rag_total, 99),
            "note": "all stages, no generation",
        },
        "rag_stage_p50_ms": {k: pct([s[k] for s in stages], 50) for k in stages[0]},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--f32", action="store_true", help="also an Edge store without quantisation (slow build)")
    ap.add_argument("--no-local", action="store_true", help="skip the qdrant-client local mode baseline")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="symbi-bench-context-"))
    out: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()},
        "dim": DIM,
        "sizes": {},
    }
    try:
        for n in (int(x) for x in args.sizes.split(",")):
            data = clustered(n)
            queries = clustered(args.queries, seed=99)
            r: dict[str, Any] = {"exact_numpy_f32": exact_numpy(data, queries[:50])}
            r["edge_int8"] = bench_edge(n, data, queries, work, "int8")
            if args.f32:
                r["edge_f32"] = bench_edge(n, data, queries, work, "none")
            if not args.no_local:
                r["qdrant_local_mode"] = bench_local(n, data, queries)
            r["ratio_edge_int8_vs_exact_p50"] = round(
                r["edge_int8"]["unfiltered"]["p50_ms"] / r["exact_numpy_f32"]["p50_ms"], 3
            )
            out["sizes"][str(n)] = r
            print(json.dumps({str(n): r}), file=sys.stderr)  # partial results as they come
            del data
        out["pipeline"] = bench_pipeline(work)
        out["compression"] = {
            "float32_bytes_per_vector": DIM * 4,
            "int8_bytes_per_vector": DIM,
            "reduction_of_searched_vectors": 0.75,
            "note": "int8 scalar quantisation keeps 1/4 of the float32 vectors in RAM for search (75%); the "
            "float32 originals stay on disk for rescoring. 80% needs a coarser code (binary: 97%, or PQ); "
            "see the recall columns for what int8 costs",
        }
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
