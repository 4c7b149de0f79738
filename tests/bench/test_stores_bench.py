"""``ctxproto bench stores`` runs end to end on small numbers and cleans up after itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.bench.stores import run
from ctxproto.cli.main import main
from tests.servers_redis import RedisServer

# The Redis parts alone: left to its default, run() also times retrieval at 100k chunks.
REDIS_PARTS = ("sessions", "cache")


def test_the_retrieval_part_times_both_backends_and_leaves_no_table(
    postgres: EmbeddedPostgres, capsys: Any
) -> None:
    url = f"postgresql://postgres:pw-not-shown@127.0.0.1:{postgres.port}/postgres"
    assert (
        main(
            [
                "bench",
                "stores",
                "--parts",
                "retrieval",
                "--chunks",
                "1500",
                "--queries",
                "20",
                "--postgres",
                url,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pw-not-shown" not in out
    retrieval = json.loads(out)["retrieval"]
    assert retrieval["chunks"] == 1500
    for backend in ("faiss", "pgvector"):
        figures = retrieval[backend]
        assert figures["recall_at_10"] == 1.0  # both exact below the HNSW threshold
        assert 0 < figures["query_p50_ms"] <= figures["query_p95_ms"]
        assert figures["filtered_query_p50_ms"] > 0
    import psycopg

    with psycopg.connect(postgres.url) as conn:
        left = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'ctxproto_bench%'")
        assert left.fetchone() == (0,)


@pytest.mark.models  # the semantic cache's embedder
def test_stores_bench_reports_both_backends_and_leaves_the_server_clean(
    redis_server: RedisServer,
):
    client = redis.Redis.from_url(redis_server.url)
    before = set(client.scan_iter(match="ctxproto:*bench-*"))
    result = run(parts=REDIS_PARTS, entries=200, sessions=30, redis_url=redis_server.url)
    for backend in ("diskcache", "redis"):
        assert result["sessions"][backend]["put_p50_ms"] > 0
        assert result["sessions"][backend]["get_p50_ms"] > 0
        cache = result["cache"][backend]
        assert cache["entries"] == 200 + cache["paraphrases_asked"]
        # The default guard (learned) answers 78% of these rewordings; its accuracy is
        # measured by `bench cache` and tests/stores. Here: the lookups really hit.
        assert cache["paraphrase_hits"] >= 0.7 * cache["paraphrases_asked"]
    assert (
        result["cache"]["redis"]["paraphrase_hits"]
        == result["cache"]["diskcache"]["paraphrase_hits"]
    )
    assert isinstance(result["cache"]["target_met"], bool)
    after = set(client.scan_iter(match="ctxproto:*bench-*"))
    leftovers = {k for k in after - before if not k.endswith((b":seq", b":embedder"))}
    assert leftovers == set()
    client.close()


@pytest.mark.models
def test_stores_bench_starts_and_stops_its_own_server():
    result = run(parts=REDIS_PARTS, entries=20, sessions=5)
    assert result["redis_server"].startswith("valkey-server")
    assert result["cache"]["redis"]["entries"] > 20
