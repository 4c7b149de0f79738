"""``ctxproto bench stores`` runs end to end on small numbers and cleans up after itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
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


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def test_sigterm_mid_run_stops_the_server_it_started_and_removes_its_folders(tmp_path):
    """``kill`` or ``timeout`` ends a benchmark with SIGTERM, whose default action ends
    Python with no cleanup: valkey-server ran on, orphaned, with its folder."""
    folders = tmp_path / "tmp"
    folders.mkdir()
    command = [sys.executable, "-m", "ctxproto", "bench", "stores", "--parts", "sessions"]
    command += ["--sessions", "10000000", "--json"]
    env = {**os.environ, "TMPDIR": str(folders), "PYTHONPATH": str(Path(__file__).parents[2])}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    servers: list[int] = []
    try:
        assert run.stderr is not None
        assert b"sessions:" in run.stderr.readline()  # the server is up: timing has begun
        servers = _children(run.pid)
        assert len(servers) == 1
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        run.kill()
        for pid in servers:  # one left running must not outlive the test either
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert run.returncode == 130, err
    assert err.decode().splitlines() == ["interrupted"] and out == b""
    assert not Path(f"/proc/{servers[0]}").exists()  # stopped and reaped
    assert list(folders.iterdir()) == []


def test_ctrl_c_while_the_server_starts_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C (or SIGTERM read as it) before the server answered its first PING: no
    owner held the process yet, and it ran on, orphaned, after the benchmark ended."""

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("ctxproto.bench.redis_server.socket.create_connection", interrupted)
    server = RedisServer(tmp_path)
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recording(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr("ctxproto.bench.redis_server.subprocess.Popen", recording)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped and reaped
    assert server.process is None
