"""What only the PostgreSQL store has: HNSW with iterative scans, a server that is
down or hangs, concurrent writer processes, and a server that crashes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

from ctxproto.bench.embedded_postgres import EmbeddedPostgres, free_port
from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError, StoreUnavailableError
from ctxproto.stores import pgvector_store
from ctxproto.stores.pgvector_store import PgVectorStore, _relation_exists

DIM = 16
ROOT = Path(__file__).resolve().parents[2]


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    normalized: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return normalized


@pytest.fixture
def store(pg_url: str) -> Iterator[PgVectorStore]:
    with PgVectorStore(pg_url, embedder="test-embedder", dimension=DIM) as opened:
        yield opened


def test_a_selective_filter_on_an_hnsw_index_still_returns_k_rows(pg_url: str) -> None:
    """Without iterative scans pgvector filters the ef_search candidates it found: 4 of 30.

    The table is small enough for the planner to prefer an exact sort, so the
    URL's libpq ``options`` (spaces and all) turn the other plans off for this
    connection, as the planner does on its own for a large table.
    """
    url = pg_url + "&options=" + quote("-c enable_seqscan=off -c enable_bitmapscan=off", safe="")
    with PgVectorStore(url, embedder="e", dimension=DIM, hnsw_threshold=1000) as store:
        vectors = _vectors(3000)
        for start in range(0, 3000, 500):
            store.add(
                f"batch{start}",
                [
                    Document(id=f"c{i}", text="", metadata={"tenant": "x" if i % 50 == 0 else "y"})
                    for i in range(start, start + 500)
                ],
                vectors[start : start + 500],
            )
        store.save()  # tenant "x" is every 50th chunk: 2% of the table
        assert store.index_kind == "hnsw"
        hits = store.search(vectors[0], 30, filters={"tenant": "x"})
        assert len(hits) == 30
        assert all(h.document.metadata["tenant"] == "x" for h in hits)
        assert hits[0].document.id == "c0"
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_an_unreachable_server_is_a_store_error_naming_the_url_without_its_password() -> None:
    url = f"postgresql://reader:s3cret-pw@127.0.0.1:{free_port()}/kb?table=docs"
    with pytest.raises(StoreUnavailableError) as raised:
        PgVectorStore(url, embedder="e", dimension=DIM, connect_timeout=1)
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert f"postgresql://reader:***@127.0.0.1:{url.split(':')[3]}" in message


def test_a_refused_connection_or_a_mismatched_store_is_not_an_outage(
    postgres: EmbeddedPostgres, pg_url: str
) -> None:
    """The server's own refusal fails the same way again: a plain ``StoreError`` (the
    proxy's 500), never the ``StoreUnavailableError`` of a server that is down (503,
    retried). Both carry no SQLSTATE from libpq; the refusal holds the server's FATAL."""
    missing = f"{postgres.url.rpartition('/')[0]}/no_such_database?table=docs"
    with pytest.raises(StoreError, match="no_such_database") as refused:
        PgVectorStore(missing, embedder="e", dimension=DIM, connect_timeout=1)
    assert not isinstance(refused.value, StoreUnavailableError)
    with PgVectorStore(pg_url, embedder="e", dimension=DIM) as store:
        store.add("d", [Document(id="d#0", text="d")], _vectors(1))
        store.save()
    with pytest.raises(StoreError, match="embedder") as mismatched:
        PgVectorStore(pg_url, embedder="another", dimension=DIM)
    assert not isinstance(mismatched.value, StoreUnavailableError)


def test_a_login_refused_after_the_store_opened_is_not_an_outage(
    postgres: EmbeddedPostgres, pg_url: str
) -> None:
    """Regression: once the pool had to reconnect and the server refused the login (a
    role set NOLOGIN, a password rotated), every request was the pool's "couldn't get a
    connection after 1.00 sec", a ``StoreUnavailableError`` (503) that clients retry
    for ever, naming no cause. The server's refusal is a ``StoreError`` (500) naming it;
    the store serves again once the login is allowed."""
    psycopg = pytest.importorskip("psycopg")
    role = f"r_{uuid.uuid4().hex[:12]}"
    url = pg_url.replace("postgres@", f"{role}@", 1)
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER")
        try:
            with PgVectorStore(url, embedder="e", dimension=DIM, connect_timeout=1) as store:
                assert store.count == 0
                admin.execute(f"ALTER ROLE {role} NOLOGIN")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (role,),
                )  # the pool must reconnect
                with pytest.raises(StoreError, match=f'role "{role}" is not permitted') as refused:
                    store.search(_vectors(1)[0], 3)
                assert not isinstance(refused.value, StoreUnavailableError)
                admin.execute(f"ALTER ROLE {role} LOGIN")
                deadline = time.monotonic() + 20  # the pool's next attempt, after its backoff
                while True:
                    try:
                        assert store.count == 0
                        break
                    except StoreError:
                        if time.monotonic() > deadline:
                            raise
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            admin.execute(f"DROP ROLE {role}")


def test_a_server_out_of_connection_slots_is_an_outage_naming_the_cause(
    postgres: EmbeddedPostgres, pg_url: str
) -> None:
    """Regression: the server refuses a connection past its limits (53300, and 57P03 as
    it starts or stops) with a FATAL and libpq keeps no SQLSTATE for it, so opening a
    store, or ``exists`` (the MCP server's per-tenant open), was a plain ``StoreError``
    (500) that no client retries, where a connection freed elsewhere lets it through."""
    psycopg = pytest.importorskip("psycopg")
    role = f"r_{uuid.uuid4().hex[:12]}"
    url = pg_url.replace("postgres@", f"{role}@", 1)
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        # not a superuser, whom no CONNECTION LIMIT applies to
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1 IN ROLE pg_read_all_data")
        try:
            with psycopg.connect(url.partition("?")[0]):  # the role's one connection
                with pytest.raises(StoreUnavailableError, match="too many connections"):
                    PgVectorStore.exists(url, connect_timeout=1)
                with pytest.raises(StoreUnavailableError, match="too many connections"):
                    PgVectorStore(url, embedder="e", dimension=DIM, connect_timeout=1)
            assert not PgVectorStore.exists(url, connect_timeout=1)
        finally:
            admin.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("password", ["50%off-pw", "Tr0ub%40dor%zz"])
def test_a_password_the_driver_quotes_back_is_not_in_the_error(password: str) -> None:
    """Regression: a password with a stray ``%`` (written as is, not as ``%25``) was
    refused by libpq with the password quoted, and the StoreError repeated it; with
    a valid escape beside it, libpq quotes it as written, not decoded."""
    url = f"postgresql://reader:{password}@127.0.0.1:{free_port()}/kb"
    with pytest.raises(StoreError, match="percent-encoded") as raised:
        PgVectorStore(url, embedder="e", dimension=DIM, connect_timeout=1)
    assert "dor" not in str(raised.value) and "off-pw" not in str(raised.value)
    with pytest.raises(StoreError, match="percent-encoded") as raised:
        PgVectorStore.exists(url, connect_timeout=1)
    assert "dor" not in str(raised.value) and "off-pw" not in str(raised.value)


def test_an_unencoded_password_is_refused_before_libpq_can_quote_it() -> None:
    """libpq read `reader:Zq9/Xw7@…` as host `reader`, port `Zq9`, and said so."""
    url = f"postgresql://reader:Zq9/Xw7@127.0.0.1:{free_port()}/kb"
    with pytest.raises(ConfigError, match="percent-encoded") as raised:
        PgVectorStore(url, embedder="e", dimension=DIM, connect_timeout=1)
    assert "Zq9" not in str(raised.value) and "Xw7" not in str(raised.value)
    with pytest.raises(ConfigError, match="percent-encoded") as raised:
        PgVectorStore.exists(url, connect_timeout=1)
    assert "Zq9" not in str(raised.value) and "Xw7" not in str(raised.value)


def test_a_percent_encoded_password_reaches_the_server(pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:Zq9%2FXw7@", 1)  # the server trusts it
    with PgVectorStore(url, embedder="e", dimension=DIM) as store:
        assert store.count == 0


def test_a_server_that_accepts_but_never_answers_fails_within_the_connect_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            PgVectorStore(
                f"postgresql://u:pw@127.0.0.1:{port}/db", embedder="e", dimension=4,
                connect_timeout=1,
            )  # fmt: skip
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("table", ["Robert'); DROP TABLE x;--", "ctxproto_vector_manifest", ""])
def test_a_table_name_that_is_not_a_plain_identifier_is_a_config_error(
    postgres: EmbeddedPostgres, table: str
) -> None:
    with pytest.raises(ConfigError, match="table"):
        PgVectorStore(f"{postgres.url}?table={table}", embedder="e", dimension=DIM)


@pytest.mark.parametrize(
    ("doc_id", "chunk"),
    [
        ("scraped", Document(id="scraped#0", text="t", metadata={"title": "Q3\x00report"})),
        ("scraped", Document(id="scraped#0", text="t", metadata={"tags": [{"k\x00": 1}]})),
        ("scr\x00ped", Document(id="scraped#0", text="t")),
    ],
)
def test_a_document_postgresql_cannot_hold_is_refused_and_the_run_keeps_the_rest(
    store: PgVectorStore, doc_id: str, chunk: Document
) -> None:
    """Regression: a NUL character anywhere in a chunk failed inside the transaction as
    "unsupported Unicode escape sequence", which rolled back every document added
    since the last save; deleting an id holding one did the same."""
    vectors = _vectors(3)
    store.add("a", [Document(id="a#0", text="a")], vectors[:1])
    store.add("b", [Document(id="b#0", text="b")], vectors[1:2])
    with pytest.raises(StoreError, match=r"document 'scr.*ped' .*NUL.*nothing of it was written"):
        store.add(doc_id, [chunk], vectors[2:])
    assert store.delete([doc_id]) == 0
    store.save()
    assert store.document_ids() == ["a", "b"]


def test_a_filter_holding_nul_matches_nothing_and_the_run_keeps_its_documents(
    store: PgVectorStore,
) -> None:
    """Regression: searched inside a write run, a filter holding NUL was refused by
    the server as a jsonb parameter, which rolled back every document added since
    the last save."""
    vectors = _vectors(2)
    store.add("a", [Document(id="a#0", text="a", metadata={"t": "x"})], vectors[:1])
    store.save()
    store.add("b", [Document(id="b#0", text="b", metadata={"t": "x"})], vectors[1:])
    assert store.search(vectors[0], 5, filters={"t": "x\x00"}) == []
    assert store.search(vectors[0], 5, filters={"t\x00": "x"}) == []
    found = store.search(vectors[0], 5, filters={"t": ["x\x00", "x"]})
    assert sorted(hit.document.id for hit in found) == ["a#0", "b#0"]
    store.save()
    assert store.document_ids() == ["a", "b"]


@pytest.mark.parametrize(
    ("doc_id", "chunk"),
    [
        ("caf\udce9.md", Document(id="caf\udce9.md#0", text="t", source="caf\udce9.md")),
        ("scraped", Document(id="scraped#0", text="half an emoji \ud83d")),
        ("scraped", Document(id="scraped#0", text="t", metadata={"title": "\udce9"})),
    ],
)
def test_a_lone_surrogate_is_refused_and_the_run_keeps_the_rest(
    store: PgVectorStore, doc_id: str, chunk: Document
) -> None:
    """Regression: a lone surrogate (what Python reads from a file name that is not
    UTF-8) raised the driver's UnicodeEncodeError inside the write transaction, which
    rolled back every document added since the last save; so did deleting such an id,
    and a filter holding one."""
    vectors = _vectors(3)
    store.add("a", [Document(id="a#0", text="a", metadata={"t": "x"})], vectors[:1])
    with pytest.raises(StoreError, match=r"lone surrogate.*nothing of it was written"):
        store.add(doc_id, [chunk], vectors[2:])
    store.add("b", [Document(id="b#0", text="b", metadata={"t": "x"})], vectors[1:2])
    assert store.delete(["caf\udce9.md"]) == 0
    assert store.search(vectors[0], 5, filters={"t": "\udce9"}) == []
    assert store.search(vectors[0], 5, filters={"\udce9": None, "t": "x"}) == []
    store.save()
    assert store.document_ids() == ["a", "b"]


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ctxproto.documents import Document
    from ctxproto.stores.pgvector_store import PgVectorStore, _relation_exists

    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(abs(hash(prefix)) % 1000)
    v = rng.standard_normal((count, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    with PgVectorStore(url, embedder="test-embedder", dimension=16) as store:
        for i in range(count):
            store.add(f"{prefix}{i}", [Document(id=f"{prefix}{i}#0", text=prefix)], v[i : i + 1])
            store.add("shared", [Document(id=f"shared#{prefix}{i}", text=prefix)], v[i : i + 1])
            if i % 10 == 9:
                store.save()
        store.save()
    print("done", flush=True)
    """
)


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_concurrent_writer_processes_lose_nothing(pg_url: str) -> None:
    writers = [_python(WRITER, pg_url, prefix, "60") for prefix in ("a", "b", "c", "d")]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    with PgVectorStore(pg_url, embedder="test-embedder", dimension=DIM) as store:
        # 4 x 60 own documents, and "shared" replaced 240 times ends as exactly one chunk
        assert store.count == 241
        assert store.chunk_count == 241


def test_a_table_created_while_waiting_on_the_schema_lock_is_seen_after_it(
    postgres: EmbeddedPostgres,
) -> None:
    """The check the schema lock guards reads what was committed while it waited.

    ``to_regclass`` answers from the connection's name cache, which a wait on
    an advisory lock does not refresh: a writer that waited while another
    created the store's tables was told they were missing, and failed
    creating them again ("relation ... already exists").
    """
    psycopg = pytest.importorskip("psycopg")
    table = f"t_{uuid.uuid4().hex[:12]}"
    lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
    with psycopg.connect(postgres.url) as creator, psycopg.connect(postgres.url) as waiter:
        assert not _relation_exists(waiter, table)  # now in its cache as missing
        waiter.commit()
        creator.execute(lock, (table,))
        creator.execute(f"CREATE TABLE {table} (a int)")
        seen: list[bool] = []

        def wait_then_look() -> None:
            waiter.execute(lock, (table,))
            seen.append(_relation_exists(waiter, table))
            waiter.rollback()

        waiting = threading.Thread(target=wait_then_look)
        waiting.start()
        time.sleep(0.5)
        creator.commit()
        waiting.join(timeout=60)
        assert seen == [True]


def test_the_first_writers_of_two_tables_on_a_new_database_both_create_their_store(
    postgres: EmbeddedPostgres,
) -> None:
    """Both need the extension and the manifest table; each held only its table's lock."""
    psycopg = pytest.importorskip("psycopg")
    database = f"fresh_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    url = postgres.url.rsplit("/", 1)[0] + f"/{database}?table="
    vectors = _vectors(2)
    with (
        PgVectorStore(url + "first", embedder="e", dimension=DIM) as first,
        PgVectorStore(url + "second", embedder="e", dimension=DIM) as second,
    ):
        first.add("a", [Document(id="a#0", text="a")], vectors[:1])  # a transaction left open
        failures: list[BaseException] = []

        def write_second() -> None:
            try:
                second.add("b", [Document(id="b#0", text="b")], vectors[1:])
                second.save()
            except BaseException as exc:
                failures.append(exc)

        writing = threading.Thread(target=write_second)
        writing.start()
        time.sleep(0.5)
        first.save()
        writing.join(timeout=60)
        assert failures == []
        assert first.count == 1 and second.count == 1


KILLED_MID_TRANSACTION = textwrap.dedent(
    """
    import sys, time, numpy as np
    from ctxproto.documents import Document
    from ctxproto.stores.pgvector_store import PgVectorStore, _relation_exists

    store = PgVectorStore(sys.argv[1], embedder="test-embedder", dimension=16)
    v = np.eye(16, dtype=np.float32)
    store.add("saved", [Document(id="saved#0", text="kept")], v[:1])
    store.save()
    store.delete(["saved"])
    store.add("unsaved", [Document(id="unsaved#0", text="lost")], v[1:2])
    print("changed", flush=True)
    time.sleep(600)
    """
)


def test_a_writer_killed_before_save_leaves_the_saved_store(pg_url: str) -> None:
    writer = _python(KILLED_MID_TRANSACTION, pg_url)
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "changed\n"
    finally:
        writer.kill()
        writer.communicate(timeout=60)
    with PgVectorStore(pg_url, embedder="test-embedder", dimension=DIM) as store:
        assert [h.document.id for h in store.search(np.eye(16, dtype=np.float32)[0], 5)] == [
            "saved#0"
        ]
        # the killed writer's lock on "saved" went with its connection
        store.delete(["saved"])
        store.save()
        assert store.count == 0


def test_a_crashed_server_loses_nothing_saved_and_the_store_reconnects(
    postgres: EmbeddedPostgres, pg_url: str
) -> None:
    vectors = _vectors(50)
    with PgVectorStore(pg_url, embedder="test-embedder", dimension=DIM) as store:
        for i in range(50):
            store.add(f"d{i}", [Document(id=f"d{i}#0", text=str(i))], vectors[i : i + 1])
        store.save()
        store.add("unsaved", [Document(id="unsaved#0", text="u")], vectors[:1])
        postgres.crash()
        with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1.*rolled back"):
            store.search(vectors[0], 1)
        with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1"):
            store.search(vectors[0], 1)
        postgres.start()
        assert store.search(vectors[7], 1)[0].document.id == "d7#0"
        assert store.count == 50
        fresh = _vectors(1, seed=5)
        store.add("after", [Document(id="after#0", text="a")], fresh)
        store.save()
        assert store.count == 51 and store.search(fresh[0], 1)[0].document.id == "after#0"


def test_a_search_the_server_does_not_answer_in_time_is_a_store_error(pg_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    vectors = _vectors(3)
    with PgVectorStore(pg_url, embedder="test-embedder", dimension=DIM, query_timeout=1) as store:
        store.add("d", [Document(id="d#0", text="d")], vectors[:1])
        store.save()
        table = pg_url.rpartition("table=")[2]
        with psycopg.connect(pg_url.partition("?")[0]) as migration:
            migration.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            start = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="statement timeout"):
                store.search(vectors[0], 1)
            assert time.monotonic() - start < 5
        assert store.search(vectors[0], 1)[0].document.id == "d#0"  # the lock is gone


def test_a_search_on_a_server_that_stopped_answering_is_a_store_error_not_a_hang(
    postgres: EmbeddedPostgres, pg_url: str
) -> None:
    """Regression: a frozen server enforces no ``statement_timeout`` and its kernel
    acknowledges every byte, so the pool's check of an idle connection before it lent
    it, and a search already waiting on the server, waited for ever. The store's
    backends and the postmaster are stopped with SIGSTOP: first with the store idle,
    then while a search waits on a migration's lock."""
    psycopg = pytest.importorskip("psycopg")
    name = f"frozen-{uuid.uuid4().hex[:8]}"
    vectors = _vectors(1)
    with (
        PgVectorStore(
            f"{pg_url}&application_name={name}",
            embedder="test-embedder",
            dimension=DIM,
            connect_timeout=1,
            query_timeout=2,
        ) as store,
        psycopg.connect(postgres.url, autocommit=True) as admin,
        psycopg.connect(pg_url.partition("?")[0]) as migration,
    ):
        store.add("d", [Document(id="d#0", text="d")], vectors)
        store.save()
        outcome: dict[str, object] = {}
        backends = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"

        def search() -> threading.Thread:
            """A search in a thread that leaves its error in ``outcome``."""
            outcome.clear()

            def run() -> None:
                with pytest.raises(StoreUnavailableError) as raised:
                    store.search(vectors[0], 1)
                outcome["error"] = str(raised.value)

            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            return thread

        @contextmanager
        def frozen() -> Iterator[None]:
            """The postmaster and the store's backends stopped inside the block."""
            pids = [postgres.pid(), *(row[0] for row in admin.execute(backends, (name,)))]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                yield
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)

        with frozen():
            search().join(15)
            assert outcome, "the pool's check of an idle connection waited on the server"
            assert "127.0.0.1" in str(outcome["error"])
        assert store.search(vectors[0], 1)[0].document.id == "d#0"

        migration.execute(f"LOCK TABLE {store.table} IN ACCESS EXCLUSIVE MODE")
        searching = search()
        while not admin.execute(f"{backends} AND wait_event_type = 'Lock'", (name,)).fetchall():
            time.sleep(0.05)
        with frozen():
            searching.join(15)
            assert outcome, "the search waited on the frozen server"
            assert "no answer within 3 s" in str(outcome["error"])
        migration.rollback()
        assert store.search(vectors[0], 1)[0].document.id == "d#0"


def test_vectors_come_back_exactly_and_a_parallel_hnsw_build_serves_them(pg_url: str) -> None:
    """The text ``COPY`` sends keeps every float32 bit, and ``build_workers`` builds the index."""
    vectors = _vectors(1200, seed=3)
    with PgVectorStore(
        pg_url, embedder="e", dimension=DIM, hnsw_threshold=1000, build_workers=2
    ) as store:
        store.add("all", [Document(id=f"c{i}", text="") for i in range(1200)], vectors)
        store.save()
        assert store.index_kind == "hnsw"
    with PgVectorStore(pg_url, embedder="e", dimension=DIM) as reader:
        hits = reader.search(vectors[7], 3)
        assert hits[0].document.id == "c7"
        found = reader.vectors_of([hit.slot for hit in hits])
    ids = [int(hit.document.id[1:]) for hit in hits]
    assert np.array_equal(found, vectors[ids])


def test_vectors_of_a_stored_chunk_survive_a_search_clearing_the_cache(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each search clears the hit cache (a limit of -1 makes every search do so): one
    that finished while ``vectors_of`` fetched reported a cached chunk gone."""
    monkeypatch.setattr(pgvector_store, "_VECTOR_CACHE_LIMIT", -1)
    vectors = _vectors(200, seed=5)
    with PgVectorStore(pg_url, embedder="e", dimension=DIM) as store:
        store.add("all", [Document(id=f"c{i}", text="") for i in range(200)], vectors)
        store.save()
        # Searches with disjoint hits: each one's clear drops the others' vectors.
        first = store.search(vectors[0], 1)[0].slot
        never_hit = store.search(vectors[2], 1)[0].slot
        stored = store.vectors_of([first])[0]

        def search_in_turns() -> None:
            for _ in range(100):
                store.search(vectors[0], 1)
                store.search(vectors[1], 1)

        searcher = threading.Thread(target=search_in_turns)
        searcher.start()
        try:
            while searcher.is_alive():
                both = store.vectors_of([first, never_hit])
                assert np.array_equal(both[0], stored)
        finally:
            searcher.join()


def test_equal_scores_come_back_oldest_first_after_vacuum_reuses_the_space(
    store: PgVectorStore, pg_url: str
) -> None:
    """Ties came back in the table's physical order, and VACUUM puts a newer row in the
    space of a deleted one: the newest duplicate came first, unlike the folder store."""
    psycopg = pytest.importorskip("psycopg")
    vector = _vectors(1)
    for n in range(4):
        store.add(f"d{n}", [Document(id=f"d{n}#0", text="footer " * 200)], vector)
    store.save()
    store.delete(["d0"])
    store.save()
    with psycopg.connect(pg_url.partition("?")[0], autocommit=True) as admin:
        admin.execute(f"VACUUM {store.table}")
    store.add("d4", [Document(id="d4#0", text="footer " * 200)], vector)
    store.save()
    assert [h.document.id for h in store.search(vector[0], 10)] == ["d1#0", "d2#0", "d3#0", "d4#0"]
