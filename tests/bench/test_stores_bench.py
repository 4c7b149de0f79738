"""``ctxproto bench stores``: FAISS and pgvector measured side by side on the same data."""

from __future__ import annotations

import json
from typing import Any

from ctxproto.bench.embedded_postgres import EmbeddedPostgres
from ctxproto.cli.main import main


def test_the_retrieval_part_times_both_backends_and_leaves_no_table(
    postgres: EmbeddedPostgres, capsys: Any
) -> None:
    url = f"postgresql://postgres:pw-not-shown@127.0.0.1:{postgres.port}/postgres"
    assert main(["bench", "stores", "--chunks", "1500", "--queries", "20", "--postgres", url]) == 0
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
