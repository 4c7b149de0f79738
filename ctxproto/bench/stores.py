"""``ctxproto bench stores [--json]``: the embedded stores against the shared servers.

One function per part, each timing the embedded store and its server peer on
the same data in the same run:

- ``retrieval``: ``--chunks`` clustered 384-d vectors (as ``bench retrieval``)
  in the FAISS ``VectorStore`` and in ``PgVectorStore``, added through the
  public ``add`` in documents of 1,000 chunks; query p50/p95 at k=10, a
  filtered query (one shard in ten) and recall@10 against the exact answer.
  Both build HNSW past 20k chunks. The pgvector time includes the round trip
  to a server on 127.0.0.1.

Without ``--postgres URL`` the benchmark starts its own PostgreSQL from the
``postgres`` extra and removes it afterwards; with it, it writes a table named
``ctxproto_bench_<pid>`` there and drops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.retrieval import DIMENSION, clustered_vectors
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.documents import Document
from ctxproto.stores.store_url import redact_url
from ctxproto.stores.vector_backend import VectorBackend

__all__ = ["register", "retrieval", "run"]

BATCH = 1_000
K = 10


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stores", help="embedded stores against PostgreSQL (and Redis), side by side"
    )
    parser.add_argument("--chunks", type=int_at_least(1), default=100_000)
    parser.add_argument("--queries", type=int_at_least(1), default=300)
    parser.add_argument(
        "--postgres", default=None, help="postgresql:// URL (default: start an embedded one)"
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = run(chunks=args.chunks, queries=args.queries, postgres=args.postgres)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def run(*, chunks: int, queries: int, postgres: str | None) -> dict[str, Any]:
    with _postgres(postgres) as url:
        return {"retrieval": retrieval(chunks=chunks, queries=queries, postgres=url)}


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from ctxproto.bench.embedded_postgres import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.url


def retrieval(*, chunks: int, queries: int, postgres: str) -> dict[str, Any]:
    """Retrieval p50/p95 on the FAISS folder and on pgvector, same vectors and probes."""
    from ctxproto.stores.pgvector_store import PgVectorStore
    from ctxproto.stores.vector_store import VectorStore

    vectors, probes = clustered_vectors(chunks, queries)
    truth = np.argsort(-(vectors @ probes.T), axis=0)[:K].T
    table = f"ctxproto_bench_{os.getpid()}"
    out: dict[str, Any] = {
        "chunks": chunks,
        "dimension": DIMENSION,
        "queries": queries,
        "postgres": redact_url(postgres),
    }
    with tempfile.TemporaryDirectory() as folder:
        faiss_store = VectorStore(Path(folder), embedder="synthetic", dimension=DIMENSION)
        out["faiss"] = _measure(faiss_store, vectors, probes, truth)
    separator = "&" if "?" in postgres else "?"
    with PgVectorStore(
        f"{postgres}{separator}table={table}", embedder="synthetic", dimension=DIMENSION
    ) as pg_store:
        try:
            out["pgvector"] = _measure(pg_store, vectors, probes, truth)
        finally:
            pg_store.drop()
    return out


def _measure(
    store: VectorBackend,
    vectors: npt.NDArray[np.float32],
    probes: npt.NDArray[np.float32],
    truth: npt.NDArray[np.int64],
) -> dict[str, Any]:
    start = time.perf_counter()
    for first in range(0, len(vectors), BATCH):
        batch = range(first, min(first + BATCH, len(vectors)))
        records = [Document(id=f"c{i}", text="", metadata={"shard": i % 10}) for i in batch]
        store.add(f"batch{first}", records, vectors[batch.start : batch.stop])
    store.save()
    build = time.perf_counter() - start
    found = [store.search(q, K) for q in probes]
    recall = np.mean(
        [
            len({int(h.document.id[1:]) for h in hits} & set(expected.tolist())) / K
            for hits, expected in zip(found, truth, strict=True)
        ]
    )
    return {
        "index_kind": store.index_kind,
        "build_seconds": round(build, 2),
        **_percentiles("query", lambda q: store.search(q, K), probes),
        **_percentiles(
            "filtered_query", lambda q: store.search(q, K, filters={"shard": 3}), probes
        ),
        "recall_at_10": round(float(recall), 4),
    }


def _percentiles(
    name: str, call: Callable[[Any], Any], items: npt.NDArray[np.float32]
) -> dict[str, float]:
    times = call_times_ms(call, list(items), warm_up=5)
    return {f"{name}_p{q}_ms": round(float(np.percentile(times, q)), 3) for q in (50, 95)}
