"""``ctxproto bench stores [--json]``: the embedded stores and the shared Redis ones, side by side.

- ``sessions``: ``put`` and ``get`` of one session's state (a 20-message
  history, about 4 KB of JSON) over ``--sessions`` sessions, in a diskcache
  folder and on Redis.
- ``cache``: semantic-cache lookups with ``--entries`` entries (100k by
  default), as ``ctxproto bench cache`` measures them (random filler vectors,
  query embeddings computed beforehand), in a diskcache folder and on Redis.

Redis is the server at ``--redis`` (a URL), or a ``valkey-server`` from the
``redis`` extra started on a free 127.0.0.1 port for the run and stopped after
it, with ``appendfsync everysec`` (the usual production setting; ``always``
costs a disk flush per write). What the run writes on a server goes under
fresh names and is deleted at the end. The target for the server backend, a
cache lookup p50 of at most 5 ms, is reported next to the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ctxproto.bench.cache import FIXTURE, speed
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.stores.store_url import redact_url

__all__ = ["cache_stores", "register", "run", "session_stores"]

CACHE_LOOKUP_P50_TARGET_MS = 5.0
BENCH_FSYNC = "appendfsync everysec"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("stores", help="session and cache stores: diskcache vs Redis")
    parser.add_argument("--entries", type=int_at_least(1), default=100_000)
    parser.add_argument("--sessions", type=int_at_least(1), default=2_000)
    parser.add_argument("--redis", default=None, help="redis:// URL (default: start one)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    result = run(entries=args.entries, sessions=args.sessions, redis_url=args.redis)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def run(*, entries: int, sessions: int, redis_url: str | None = None) -> dict[str, Any]:
    with _redis(redis_url) as url:
        shown = redact_url(redis_url) if redis_url else f"valkey-server, {BENCH_FSYNC}"
        return {
            "redis_server": shown,
            "sessions": session_stores(count=sessions, redis=url),
            "cache": cache_stores(entries=entries, redis=url),
        }


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

    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]
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


@contextmanager
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
