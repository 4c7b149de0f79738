"""``ctxproto bench stores [--json]``: the embedded stores against the shared servers.

One function per part, each timing the embedded store and its server peer on
the same data in the same run (``--parts`` picks some; all by default):

- ``retrieval``: ``--chunks`` clustered 384-d vectors (as ``bench retrieval``)
  in the FAISS ``VectorStore`` and in ``PgVectorStore``, added through the
  public ``add`` in documents of 1,000 chunks; query p50/p95 at k=10, a
  filtered query (one shard in ten) and recall@10 against the exact answer.
  Both build HNSW past 20k chunks. The pgvector time includes the round trip
  to a server on 127.0.0.1. Rows go in by ``COPY`` in one transaction and the
  HNSW index is built once, after they are all in, with as many parallel
  workers as this machine has cores when the benchmark started the server
  itself (for ``--postgres URL``, the server's own setting).
- ``sessions``: ``put`` and ``get`` of one session's state (a 20-message
  history, about 4 KB of JSON) over ``--sessions`` sessions, in a diskcache
  folder and on Redis.
- ``cache``: semantic-cache lookups with ``--entries`` entries (100k by
  default), as ``ctxproto bench cache`` measures them (random filler vectors,
  query embeddings computed beforehand), in a diskcache folder and on Redis.

Without ``--postgres URL`` the benchmark starts its own PostgreSQL from the
``postgres`` extra and removes it afterwards; with it, it writes a table named
``ctxproto_bench_<pid>`` there and drops it at the end. Redis is the server at
``--redis`` (a URL), or a ``valkey-server`` from the ``redis`` extra started on
a free 127.0.0.1 port for the run and stopped after it, with ``appendfsync
everysec`` (the usual production setting; ``always`` costs a disk flush per
write). What the run writes on a server goes under fresh names and is deleted
at the end. The target for the server backend, a cache lookup p50 of at most
5 ms, is reported next to the figures. Progress goes to stderr, so a run at
the defaults (100k chunks, 100k cache entries: several minutes) shows where
it is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.cache import FIXTURES, speed
from ctxproto.bench.machine import print_figures
from ctxproto.bench.retrieval import DIMENSION, clustered_vectors
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.documents import Document
from ctxproto.errors import ConfigError
from ctxproto.stores.store_url import redact_url
from ctxproto.stores.vector_backend import VectorBackend

__all__ = ["PARTS", "cache_stores", "register", "retrieval", "run", "session_stores"]

BATCH = 1_000
K = 10
CACHE_LOOKUP_P50_TARGET_MS = 5.0
BENCH_FSYNC = "appendfsync everysec"
PARTS = ("retrieval", "sessions", "cache")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "stores", help="embedded stores against PostgreSQL and Redis, side by side"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)} (default: all)"
    )
    parser.add_argument(
        "--chunks", type=int_at_least(1), default=100_000, help="retrieval: vectors stored"
    )
    parser.add_argument(
        "--queries", type=int_at_least(1), default=300, help="retrieval: timed queries"
    )
    parser.add_argument(
        "--postgres", default=None, help="postgresql:// URL (default: start an embedded one)"
    )
    parser.add_argument(
        "--entries", type=int_at_least(1), default=100_000, help="cache: entries looked up in"
    )
    parser.add_argument(
        "--sessions", type=int_at_least(1), default=2_000, help="sessions: states put and got"
    )
    parser.add_argument("--redis", default=None, help="redis:// URL (default: start one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    parts = tuple(part.strip() for part in args.parts.split(",") if part.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        named = f"unknown part(s) {', '.join(unknown)}" if unknown else "no part named"
        raise ConfigError(named, key="--parts", expected=", ".join(PARTS))
    result = run(
        parts=parts,
        chunks=args.chunks,
        queries=args.queries,
        postgres=args.postgres,
        entries=args.entries,
        sessions=args.sessions,
        redis_url=args.redis,
    )
    return print_figures(result, as_json=args.json)


def run(
    *,
    parts: tuple[str, ...] = PARTS,
    chunks: int = 100_000,
    queries: int = 300,
    postgres: str | None = None,
    entries: int = 100_000,
    sessions: int = 2_000,
    redis_url: str | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "retrieval" in parts:
        _progress("starting PostgreSQL" if postgres is None else "PostgreSQL: given by --postgres")
        with _postgres(postgres) as url:
            workers = None if postgres is not None else os.cpu_count()
            result["retrieval"] = retrieval(
                chunks=chunks, queries=queries, postgres=url, build_workers=workers
            )
    if "sessions" in parts or "cache" in parts:
        with _redis(redis_url) as url:
            result["redis_server"] = (
                redact_url(redis_url) if redis_url else f"valkey-server, {BENCH_FSYNC}"
            )
            if "sessions" in parts:
                _progress(f"sessions: {sessions} puts and gets, diskcache then Redis")
                result["sessions"] = session_stores(count=sessions, redis=url)
            if "cache" in parts:
                _progress(f"cache: filling {entries} entries, diskcache then Redis")
                result["cache"] = cache_stores(entries=entries, redis=url)
    _progress("done")
    return result


def _progress(message: str) -> None:
    """One line on stderr, with the time of day."""
    print(f"[bench stores {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from ctxproto.bench.embedded_postgres import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server.url


def retrieval(
    *, chunks: int, queries: int, postgres: str, build_workers: int | None = None
) -> dict[str, Any]:
    """Retrieval p50/p95 on the FAISS folder and on pgvector, same vectors and probes.

    ``build_workers`` is the pgvector store's parallel HNSW build (``None``:
    the server's setting).
    """
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
        out["faiss"] = _measure("faiss", faiss_store, vectors, probes, truth)
    separator = "&" if "?" in postgres else "?"
    with PgVectorStore(
        f"{postgres}{separator}table={table}",
        embedder="synthetic",
        dimension=DIMENSION,
        build_workers=build_workers,
    ) as pg_store:
        try:
            out["pgvector"] = _measure("pgvector", pg_store, vectors, probes, truth)
        finally:
            pg_store.drop()
    return out


def _measure(
    name: str,
    store: VectorBackend,
    vectors: npt.NDArray[np.float32],
    probes: npt.NDArray[np.float32],
    truth: npt.NDArray[np.int64],
) -> dict[str, Any]:
    start = time.perf_counter()
    report_every = max(BATCH, len(vectors) // 10 // BATCH * BATCH)
    for first in range(0, len(vectors), BATCH):
        batch = range(first, min(first + BATCH, len(vectors)))
        records = [Document(id=f"c{i}", text="", metadata={"shard": i % 10}) for i in batch]
        store.add(f"batch{first}", records, vectors[batch.start : batch.stop])
        if batch.stop % report_every == 0 or batch.stop == len(vectors):
            _progress(f"{name}: added {batch.stop}/{len(vectors)} chunks")
    _progress(f"{name}: saving (the HNSW index is built past 20k chunks)")
    store.save()
    build = time.perf_counter() - start
    _progress(f"{name}: saved in {build:.1f} s; {len(probes)} queries, plain and filtered")
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


def session_stores(*, count: int, redis: str) -> dict[str, Any]:
    """Session ``put``/``get`` p50 in a diskcache folder and on the server at ``redis``."""
    namespace = f"bench-{uuid.uuid4().hex[:12]}"
    with tempfile.TemporaryDirectory() as folder:
        return {
            "diskcache": _sessions(folder, namespace, count),
            "redis": _sessions(redis, namespace, count),
        }


def cache_stores(*, entries: int, redis: str) -> dict[str, Any]:
    """Semantic-cache lookup p50 with ``entries`` entries, diskcache and Redis."""
    from ctxproto.models.embedder import get_embedder

    pairs = FIXTURES / "cache_pairs" / "test.jsonl"
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines() if line]
    get_embedder().embed([r["a"] for r in rows] + [r["b"] for r in rows])
    result = {
        "diskcache": speed(rows, entries),
        "redis": _cache_on_server(rows, entries, f"{redis}#bench-{uuid.uuid4().hex[:12]}"),
    }
    lookup = result["redis"]["lookup_p50_ms"]
    return {
        **result,
        "target_redis_lookup_p50_ms": CACHE_LOOKUP_P50_TARGET_MS,
        "target_met": lookup <= CACHE_LOOKUP_P50_TARGET_MS,
    }


def _sessions(location: str, namespace: str, count: int) -> dict[str, Any]:
    from ctxproto.stores.session_state import open_session_store

    store = open_session_store(location, namespace=namespace)
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "x" * 180}
        for i in range(20)
    ]
    ids = [f"session-{i}" for i in range(count)]
    put_ms = call_times_ms(lambda s: store.put("bench", s, {"messages": history}), ids)
    get_ms = call_times_ms(lambda s: store.get("bench", s), ids)
    for session in ids:
        store.delete("bench", session)
    store.close()
    return {
        "sessions": count,
        "state_bytes": len(json.dumps({"messages": history})),
        "put_p50_ms": round(float(np.percentile(put_ms, 50)), 3),
        "get_p50_ms": round(float(np.percentile(get_ms, 50)), 3),
        "put_p95_ms": round(float(np.percentile(put_ms, 95)), 3),
        "get_p95_ms": round(float(np.percentile(get_ms, 95)), 3),
    }


def _cache_on_server(rows: list[dict[str, Any]], entries: int, location: str) -> dict[str, Any]:
    from ctxproto.stores.semantic_cache import SemanticCache

    try:
        return speed(rows, entries, location)
    finally:
        cache = SemanticCache(location)
        cache.clear()
        cache.close()


@contextlib.contextmanager
def _redis(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from ctxproto.bench.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder), fsync=BENCH_FSYNC.split()[1])
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
