"""The retrieval store on PostgreSQL with pgvector, shared by every replica.

One table per store (``?table=NAME`` in the URL, ``ctxproto_chunks`` by
default): a row per chunk with its document id, text, JSONB metadata, source
and ``vector(d)``. A row of ``ctxproto_vector_manifest`` names the embedder and
dimension, and opening a store with another embedder is a ``StoreError``, as
for the FAISS store.

The semantics follow ``VectorStore``: ``add`` replaces a document, ``delete``
removes documents, and neither is seen by other readers until ``save``, which
commits them all at once. The changes are one open transaction on one pooled
connection, so this store's own searches see them and a writer killed before
``save`` leaves the table as it was. A writer takes its table's advisory lock
with its first change and holds it until ``save``: writers of one table run
one after another (the next waits, without a time limit, for the one before to
save or roll back), so the first creates the table and no two build its index.
Replacing a document also takes a lock on its id. The extension and the
manifest table, which every store shares, are created once in a transaction
of their own under a lock for the whole database.

Past ``hnsw_threshold`` chunks ``save`` builds an HNSW index (inner product,
the FAISS parameters) over the rows already loaded, which is far faster than
growing the graph row by row: with ``maintenance_work_mem`` large enough for
the graph, and ``build_workers`` parallel workers when given. A filtered HNSW search runs with
``hnsw.iterative_scan = strict_order``: without it pgvector stops after
``ef_search`` candidates and silently returns fewer than ``k`` rows under a
selective filter (pgvector 0.8 added iterative scans for this).

A server that is down is a ``StoreUnavailableError`` naming the URL without
its password after ``connect_timeout`` seconds; the pool checks a connection
before lending it, so a restarted server is reconnected to rather than reported
broken. A pool that has no connection to lend is judged, and named, by its last
failure to connect (``_last_failure_connection_class``): a server that refuses
the login once the store is open (a password rotated, a role set ``NOLOGIN``, a
database dropped) is a plain ``StoreError`` saying so, not an outage retried for
ever. A search or count that the server does not finish within
``query_timeout`` seconds (a table locked by a migration, an overloaded server)
is a ``StoreUnavailableError`` too: the proxy answers without waiting forever,
and a retry may succeed (``_unreachable``; a refused password or a mismatched
store stays a plain ``StoreError``). A server that stops answering altogether
(frozen, stuck on its disk) enforces no ``statement_timeout``, so a read, and
the pool's check of a connection it lends, is also given up by the client after
``query_timeout + connect_timeout`` seconds (``_answered_within``). Writes have
no such limit, since a writer may wait for another writer's documents.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from ctxproto._extras import require
from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError, StoreUnavailableError
from ctxproto.stores.docstore import MetadataFilter, filter_key
from ctxproto.stores.storable_text import unstorable
from ctxproto.stores.store_url import check_credentials, redact_url, scrub_secrets, url_secrets
from ctxproto.stores.vector_index import (
    HNSW_EF_CONSTRUCTION,
    HNSW_EF_SEARCH,
    HNSW_NEIGHBOURS,
    checked_vectors,
)
from ctxproto.stores.vector_store import FORMAT_VERSION, StoreHit

__all__ = ["DEFAULT_TABLE", "MANIFEST_TABLE", "PgVectorStore", "table_name"]

DEFAULT_TABLE = "ctxproto_chunks"
MANIFEST_TABLE = "ctxproto_vector_manifest"
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,50}")
_DERIVED_SUFFIXES = ("_doc_id", "_metadata", "_hnsw", "_pkey", "_id_seq")
"""How the names of a table's indexes and sequence end (``{table}_doc_id``, ...)."""
HNSW_BUILD_MEMORY = "512MB"
PING_TIMEOUT_S = 1.0
_VECTOR_CACHE_LIMIT = 10_000  # slots -> vectors of recent hits, for MMR after a search
_DOCUMENT_COLUMNS = ("id", "text", "metadata", "source")


class PgVectorStore:
    """Chunks and their vectors in a PostgreSQL table, searched by pgvector."""

    def __init__(
        self,
        url: str,
        *,
        embedder: str,
        dimension: int,
        hnsw_threshold: int = 20_000,
        connect_timeout: float = 5.0,
        query_timeout: float = 10.0,
        pool_size: int = 4,
        build_workers: int | None = None,
    ) -> None:
        self.embedder = embedder
        self.dimension = dimension
        self.hnsw_threshold = hnsw_threshold
        self.build_workers = build_workers
        """Parallel workers for the HNSW build; ``None`` keeps the server's
        ``max_parallel_maintenance_workers`` (2 by default)."""
        self.url = redact_url(url)
        self._secrets = url_secrets(url)
        check_credentials(url)
        self.table = table_name(url)
        self._vectors: dict[int, npt.NDArray[np.float32]] = {}
        self._writer: Any = None
        self._table_seen = False
        self._shared_schema_seen = False
        self._answer_limit = query_timeout + connect_timeout
        """How long a read waits for a reply before its connection is cut: past the
        server's own ``statement_timeout``, by the time a connection may take."""
        self._pool = _open_pool(
            url,
            connect_timeout=connect_timeout,
            query_timeout=query_timeout,
            size=pool_size,
        )
        try:
            manifest = self._read_manifest()
            if manifest is not None:
                self._check_embedder(*manifest)
        except BaseException:
            self._pool.close()
            raise

    @classmethod
    def exists(cls, url: str, *, connect_timeout: float = 5.0) -> bool:
        """Whether ``url`` names a store that ``save`` has written."""
        psycopg = require("psycopg", extra="postgres")
        check_credentials(url)
        table = table_name(url)
        with (
            _errors_named(redact_url(url), url_secrets(url)),
            psycopg.connect(_conninfo(url), connect_timeout=max(1, round(connect_timeout))) as conn,
        ):
            return _manifest_row(conn, table) is not None

    def close(self) -> None:
        """Drop unsaved changes and close the connection pool."""
        if self._writer is not None:
            self._writer.rollback()
            self._pool.putconn(self._writer)
            self._writer = None
        self._pool.close()

    def drop(self) -> None:
        """Delete the store: its table and its manifest row, at once."""
        with self._writing() as conn:
            conn.execute(f"DROP TABLE {self.table}")
            conn.execute(f"DELETE FROM {MANIFEST_TABLE} WHERE table_name = %s", (self.table,))
            conn.commit()
        self._pool.putconn(self._writer)
        self._writer = None
        self._vectors.clear()
        self._table_seen = False

    def __enter__(self) -> PgVectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def count(self) -> int:
        """Documents in the store."""
        return self._scalar(f"SELECT count(DISTINCT doc_id) FROM {self.table}")

    @property
    def chunk_count(self) -> int:
        return self._scalar(f"SELECT count(*) FROM {self.table}")

    @property
    def index_kind(self) -> str:
        found = self._scalar(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
            (self.table, "%USING hnsw%"),
        )
        return "hnsw" if found else "flat"

    def add(
        self, doc_id: str, chunks: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> None:
        """Add (or replace) document ``doc_id`` with its chunks and their normalized vectors."""
        if not chunks:
            raise StoreError(f"document '{doc_id}' has no chunks to add")
        if len(chunks) != len(vectors):
            raise StoreError(f"{len(chunks)} chunks but {len(vectors)} vectors for '{doc_id}'")
        matrix = checked_vectors(vectors, self.dimension)
        rows = []
        for chunk in chunks:
            fields = chunk.model_dump(mode="json", exclude=set(_DOCUMENT_COLUMNS))
            if unstorable(
                (doc_id, chunk.id, chunk.text, chunk.source, chunk.metadata, fields), nul=True
            ):
                # Refused before the transaction is touched: a failed statement would roll
                # back every document added since the last save, not just this one.
                raise StoreError(
                    f"document {doc_id!r} (chunk {chunk.id!r}) holds a NUL character or a "
                    "lone surrogate (not UTF-8), which PostgreSQL text cannot store; nothing "
                    f"of it was written to {self.url}"
                )
            rows.append((chunk, fields))
        jsonb = require("psycopg.types.json", extra="postgres").Jsonb
        with self._writing() as conn:
            self._delete_locked(conn, [doc_id])
            with (
                conn.cursor() as cursor,
                cursor.copy(
                    f"COPY {self.table} (doc_id, chunk_id, text, metadata, source, fields,"
                    " embedding) FROM STDIN"
                ) as copy,
            ):
                for (chunk, fields), vector in zip(rows, matrix, strict=True):
                    copy.write_row(
                        (
                            doc_id,
                            chunk.id,
                            chunk.text,
                            jsonb(chunk.metadata),
                            chunk.source,
                            jsonb(fields),
                            _vector_literal(vector),
                        )
                    )

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many chunks were removed."""
        with self._writing() as conn:
            return self._delete_locked(conn, doc_ids)

    def document_ids(self) -> list[str]:
        """The ids of the documents in the store, sorted, unsaved changes included."""
        with self._reading() as conn:
            if not self._table_exists(conn):
                return []
            rows = conn.execute(f"SELECT DISTINCT doc_id FROM {self.table}").fetchall()
        return sorted(str(row[0]) for row in rows)

    def chunks_of(self, doc_id: str) -> list[Document]:
        """The chunks stored for ``doc_id``, in the order they were added."""
        if unstorable(doc_id, nul=True):  # no such row can exist, and the query would be refused
            return []
        with self._reading() as conn:
            if not self._table_exists(conn):
                return []
            rows = conn.execute(
                f"SELECT chunk_id, text, metadata, source, fields FROM {self.table}"
                " WHERE doc_id = %s ORDER BY id",
                (doc_id,),
            ).fetchall()
        return [_chunk(*row) for row in rows]

    def _delete_locked(self, conn: Any, doc_ids: Sequence[str]) -> int:
        removed = 0
        # The rest have no rows: ``add`` refuses them.
        storable = {doc_id for doc_id in doc_ids if not unstorable(doc_id, nul=True)}
        for doc_id in sorted(storable):  # one order for every writer: no lock cycles
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"ctxproto-doc:{self.table}:{doc_id}",),
            )
            cursor = conn.execute(f"DELETE FROM {self.table} WHERE doc_id = %s", (doc_id,))
            removed += cursor.rowcount
        return removed

    def search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        *,
        min_score: float | None = None,
        filters: MetadataFilter | None = None,
    ) -> list[StoreHit]:
        """The ``k`` most similar chunks above ``min_score`` that match ``filters``, best first."""
        query = _vector_literal(checked_vectors(vector.reshape(1, -1), self.dimension)[0])
        where, parameters = _filter_sql(filters) if filters else ("TRUE", [])
        sql = (
            f"SELECT id, chunk_id, text, metadata, source, fields, embedding,"
            f" -(embedding <#> %s::vector) FROM {self.table} WHERE {where}"
            " ORDER BY embedding <#> %s::vector LIMIT %s"
        )
        with self._reading() as conn:
            if not self._table_exists(conn):
                return []
            if k > HNSW_EF_SEARCH:  # the session default (see _open_pool) would cap k
                conn.execute(f"SET LOCAL hnsw.ef_search = {min(k, 1000)}")
            rows = conn.execute(sql, (query, *parameters, query, k), binary=True).fetchall()
        # Equal scores oldest row first, as in the folder store. The table returns them
        # in physical order, where VACUUM puts a new row in a deleted one's space; an
        # ``ORDER BY ..., id`` would keep the HNSW index from serving the query.
        rows.sort(key=lambda row: (-row[7], row[0]))
        if len(self._vectors) > _VECTOR_CACHE_LIMIT:
            self._vectors.clear()
        hits = []
        for slot, chunk_id, text, metadata, source, fields, embedding, score in rows:
            self._vectors[slot] = _from_binary(embedding)
            if min_score is not None and score < min_score:
                continue
            document = _chunk(chunk_id, text, metadata, source, fields)
            hits.append(StoreHit(document, float(score), slot))
        return hits

    def lexical_search(
        self, text: str, k: int, *, filters: MetadataFilter | None = None
    ) -> list[StoreHit]:
        """Not offered: PostgreSQL's text ranking is not BM25, and a BM25 index kept
        in each replica's memory would go stale as the others write."""
        raise ConfigError(
            f"hybrid retrieval needs a folder store; {self.url} is searched by vector only",
            key="lexical_weight",
            expected="0 with a postgresql:// store",
        )

    def vectors_of(self, slots: Sequence[int]) -> npt.NDArray[np.float32]:
        """The vectors of ``slots``; a slot's vector never changes, so recent hits are cached.

        The result is built from what this call found, never read back from the
        cache: a concurrent ``search`` may clear it at any moment, and a chunk
        that is still stored must not be reported gone.
        """
        found: dict[int, npt.NDArray[np.float32]] = {}
        for slot in slots:
            cached = self._vectors.get(slot)
            if cached is not None:
                found[slot] = cached
        missing = [slot for slot in slots if slot not in found]
        if missing:
            with self._reading() as conn:
                rows = conn.execute(
                    f"SELECT id, embedding FROM {self.table} WHERE id = ANY(%s)",
                    (missing,),
                    binary=True,
                ).fetchall()
            for slot, embedding in rows:
                found[slot] = self._vectors[slot] = _from_binary(embedding)
        if not slots:
            return np.empty((0, self.dimension), dtype=np.float32)
        try:
            return np.stack([found[slot] for slot in slots])
        except KeyError as exc:
            raise StoreError(f"chunk {exc.args[0]} is no longer in {self.url}") from exc

    def save(self) -> None:
        """Commit every change since the last save; build the HNSW index once it pays."""
        with self._writing() as conn:
            chunks = conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
            if chunks >= self.hnsw_threshold:
                # pgvector builds the graph far faster when it fits in memory
                conn.execute(f"SET LOCAL maintenance_work_mem = '{HNSW_BUILD_MEMORY}'")
                if self.build_workers is not None:
                    workers = max(0, int(self.build_workers))
                    conn.execute(f"SET LOCAL max_parallel_maintenance_workers = {workers}")
                conn.execute(
                    f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table}"
                    f" USING hnsw (embedding vector_ip_ops)"
                    f" WITH (m = {HNSW_NEIGHBOURS}, ef_construction = {HNSW_EF_CONSTRUCTION})"
                )
            conn.commit()
        self._pool.putconn(self._writer)
        self._writer = None

    def refresh(self) -> bool:
        """Nothing to do: every search reads the table as last committed."""
        return False

    def ping(self) -> None:
        """One ``SELECT 1`` on a pooled connection (``/health``).

        The pool is given ``PING_TIMEOUT_S`` rather than the connect timeout to
        lend one, so a server that is down is reported by name within the time
        ``/health`` allows a check.
        """
        with (
            _errors_named(self.url, self._secrets, pool=self._pool),
            self._pool.connection(timeout=PING_TIMEOUT_S) as conn,
            _answered_within(conn, self._answer_limit),
        ):
            conn.execute("SELECT 1")

    def _check_embedder(self, embedder: str, dimension: int) -> None:
        if embedder != self.embedder or dimension != self.dimension:
            raise StoreError(
                f"the store {self.table} at {self.url} was built with embedder '{embedder}' "
                f"(dimension {dimension}); it cannot be used with '{self.embedder}' "
                f"(dimension {self.dimension}): rebuild it with `ctxproto index`"
            )

    def _read_manifest(self) -> tuple[str, int] | None:
        with self._reading() as conn:
            return _manifest_row(conn, self.table)

    def _table_exists(self, conn: Any) -> bool:
        """Asked until the table is there; a table dropped later fails its query instead."""
        if not self._table_seen:
            self._table_seen = _relation_exists(conn, self.table)
        return self._table_seen

    def _scalar(self, sql: str, parameters: Sequence[object] = ()) -> int:
        with self._reading() as conn:
            if not self._table_exists(conn):
                return 0
            return int(conn.execute(sql, parameters).fetchone()[0])

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """The open write transaction (to see unsaved changes) or a pooled connection."""
        if self._writer is not None:
            with self._writing() as conn:
                yield conn
            return
        with (
            _errors_named(self.url, self._secrets, pool=self._pool),
            self._pool.connection() as conn,
            _answered_within(conn, self._answer_limit),
        ):
            yield conn

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        """The write transaction, begun on first use; a failure rolls it all back."""
        with _errors_named(
            self.url, self._secrets, losing_changes=self._writer is not None, pool=self._pool
        ):
            try:
                if self._writer is None:
                    self._create_shared_schema()
                    self._writer = self._pool.getconn()
                    self._writer.execute("SET LOCAL statement_timeout = 0")
                    self._create_schema(self._writer)
                yield self._writer
            except BaseException:
                if self._writer is not None:
                    writer, self._writer = self._writer, None
                    writer.rollback()
                    self._pool.putconn(writer)
                    self._table_seen = False  # it may have been created by what rolled back
                raise

    def _create_shared_schema(self) -> None:
        """The extension and the manifest table every store's table shares, committed.

        Created in a short transaction of their own under one lock for the
        whole database: two writers of different tables on a new database
        (each holding only its table's lock) both created them and the second
        failed on a duplicate key in the catalogue.
        """
        if self._shared_schema_seen:
            return
        with self._pool.connection() as conn:  # commits on leaving
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("ctxproto-schema",)
            )
            if not _relation_exists(conn, MANIFEST_TABLE):
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {MANIFEST_TABLE} (table_name text PRIMARY KEY,"
                    " format_version integer NOT NULL, embedder text NOT NULL,"
                    " dimension integer NOT NULL)"
                )
        self._shared_schema_seen = True

    def _create_schema(self, conn: Any) -> None:
        """Table, index and manifest row, created by the first writer (others wait for it)."""
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"ctxproto-schema:{self.table}",),
        )
        manifest = _manifest_row(conn, self.table)
        if manifest is not None:
            self._check_embedder(*manifest)
            return
        conn.execute(
            f"CREATE TABLE {self.table} (id bigserial PRIMARY KEY, doc_id text NOT NULL,"
            " chunk_id text NOT NULL, text text NOT NULL, metadata jsonb NOT NULL,"
            f" source text, fields jsonb NOT NULL, embedding vector({self.dimension}) NOT NULL)"
        )
        conn.execute(f"CREATE INDEX {self.table}_doc_id ON {self.table} (doc_id)")
        conn.execute(
            f"CREATE INDEX {self.table}_metadata ON {self.table}"
            " USING gin (metadata jsonb_path_ops)"
        )
        conn.execute(
            f"INSERT INTO {MANIFEST_TABLE} VALUES (%s, %s, %s, %s)",
            (self.table, FORMAT_VERSION, self.embedder, self.dimension),
        )


def _open_pool(url: str, *, connect_timeout: float, query_timeout: float, size: int) -> Any:
    """A pool of checked connections, opened after one direct connection succeeded.

    The direct connection is there for its error: a pool that cannot connect
    only says it timed out, while the server's refusal names the cause.
    """
    psycopg = require("psycopg", extra="postgres")
    pool_module = require("psycopg_pool", extra="postgres")
    timeout_seconds = max(1, round(connect_timeout))
    with _errors_named(redact_url(url), url_secrets(url)):
        psycopg.connect(_conninfo(url), connect_timeout=timeout_seconds).close()
        # session defaults, so a search needs no SET of its own; after the URL's options
        given = psycopg.conninfo.conninfo_to_dict(_conninfo(url)).get("options", "")
        options = (
            f"{given} -c hnsw.iterative_scan=strict_order -c hnsw.ef_search={HNSW_EF_SEARCH}"
            f" -c statement_timeout={max(1, round(query_timeout * 1000))}"
        )
        pool = pool_module.ConnectionPool(
            _conninfo(url),
            min_size=1,
            max_size=max(1, size),
            kwargs={
                "connect_timeout": timeout_seconds,
                "options": options.strip(),
                # A server lost to the network (no FIN, no RST) frees the connection
                # after this long, instead of after the kernel's minutes of retries.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": round((query_timeout + connect_timeout) * 1000),
            },
            connection_class=_last_failure_connection_class(),
            timeout=connect_timeout,
            check=functools.partial(_check_answering, seconds=connect_timeout),
            open=False,
        )
        try:
            pool.open(wait=True, timeout=connect_timeout)
        except BaseException:
            pool.close()
            raise
    return pool


def _last_failure_connection_class() -> type[Any]:
    """A connection class of one pool's own, which keeps the pool's last failure to connect.

    psycopg_pool (3.3) reconnects in its own threads and only logs why it failed: a
    caller waiting for a connection gets "couldn't get a connection after 5.00 sec",
    the same for a server that is down and one that refuses the login. The class is
    the pool's ``connection_class``, through which it makes every connection, so the
    failure is the pool's own, current until a connection succeeds; a class per
    pool, so one tenant's store is never judged by another's.
    """
    require("psycopg", extra="postgres")
    from psycopg import Connection, Error

    class LastFailureConnection(Connection[Any]):
        last_failure: ClassVar[Error | None] = None

        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
            try:
                conn = super().connect(conninfo, **kwargs)
            except Error as exc:
                cls.last_failure = exc
                raise
            cls.last_failure = None
            return conn

    return LastFailureConnection


def _check_answering(conn: Any, *, seconds: float) -> None:
    """The pool's check of a connection before it lends it, given up after ``seconds``.

    The check is one empty query: on a connection whose server stopped answering
    it waited for ever, in the caller's thread, before the search had even begun.
    """
    pool_module = require("psycopg_pool", extra="postgres")
    with _answered_within(conn, seconds):
        pool_module.ConnectionPool.check_connection(conn)


@contextmanager
def _answered_within(conn: Any, seconds: float) -> Iterator[None]:
    """The block, with ``conn`` cut off if it has not ended within ``seconds``.

    ``statement_timeout`` is the server's: a server that stopped answering (frozen,
    swapped out, stuck on its disk) never enforces it, and its kernel still
    acknowledges what is sent, so neither ``tcp_user_timeout`` nor keepalives
    notice, and libpq waits for the reply for ever. Shutting the socket down wakes
    libpq with the connection closed, which the block's driver error then reports
    as no answer in time; the pool discards the closed connection.
    """
    psycopg = require("psycopg", extra="postgres")

    def cut_off() -> None:
        try:
            with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):  # closed already: nothing left to wait on
            pass

    deadline = _WATCHDOG.start(seconds, cut_off)
    try:
        yield
    except psycopg.Error as exc:
        if deadline.expired:
            raise psycopg.OperationalError(
                f"no answer within {seconds:g} s; the connection was dropped"
            ) from exc
        raise
    finally:
        deadline.end()


class _Deadline:
    """One block's deadline: ``cut_off`` runs when it expires before the block ends."""

    def __init__(self, cut_off: Callable[[], None]) -> None:
        self._lock = threading.Lock()
        self._cut_off: Callable[[], None] | None = cut_off
        self.expired = False

    def expire(self) -> None:
        with self._lock:
            if self._cut_off is not None:
                self.expired = True
                self._cut_off()

    def end(self) -> None:
        """The block ended: no cut from now on (and the connection is not held on to)."""
        with self._lock:
            self._cut_off = None


class _Watchdog:
    """One thread that expires the ``_Deadline`` of every read, in deadline order.

    A ``threading.Timer`` per read started a thread for each search and each pool
    check, which made a search of a small table three to four times slower. A
    deadline that ended in time stays in the heap, inert, until it comes due.
    """

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()  # equal times never compare the deadlines
        self._thread: threading.Thread | None = None

    def start(self, seconds: float, cut_off: Callable[[], None]) -> _Deadline:
        deadline = _Deadline(cut_off)
        due = time.monotonic() + seconds
        with self._wake:
            if self._thread is None or not self._thread.is_alive():  # first use, or forked
                self._thread = threading.Thread(
                    target=self._run, name="ctxproto-pgvector-deadlines", daemon=True
                )
                self._thread.start()
            if not self._due or due < self._due[0][0]:
                self._wake.notify()  # the thread sleeps until the earliest due time
            heapq.heappush(self._due, (due, next(self._order), deadline))
        return deadline

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(self._due[0][0] - time.monotonic() if self._due else None)
                deadline = heapq.heappop(self._due)[2]
            deadline.expire()


_WATCHDOG = _Watchdog()


def _relation_exists(conn: Any, name: str) -> bool:
    """Whether ``name`` is a table on the search path, as committed now.

    Read from ``pg_class`` rather than with ``to_regclass``: the latter answers
    from the connection's name cache, which waiting on an advisory lock does
    not refresh, so a writer that waited for another to create the store's
    tables was told they were still missing and failed to create them again
    ("relation ... already exists").
    """
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c"
        " WHERE c.relname = %s AND pg_catalog.pg_table_is_visible(c.oid))",
        (name,),
    ).fetchone()
    return bool(row[0])


def _manifest_row(conn: Any, table: str) -> tuple[str, int] | None:
    if not _relation_exists(conn, MANIFEST_TABLE):
        return None
    row = conn.execute(
        f"SELECT format_version, embedder, dimension FROM {MANIFEST_TABLE} WHERE table_name = %s",
        (table,),
    ).fetchone()
    if row is None:
        return None
    if row[0] != FORMAT_VERSION:
        raise StoreError(
            f"the store {table} has format version {row[0]}; "
            f"this ctxproto reads version {FORMAT_VERSION}"
        )
    return str(row[1]), int(row[2])


@contextmanager
def _errors_named(
    shown: str, secrets: Sequence[str], *, losing_changes: bool = False, pool: Any = None
) -> Iterator[None]:
    """Driver and pool failures as a ``StoreError`` naming the redacted URL ``shown``,
    the URL's ``secrets`` scrubbed from the driver's message.

    A ``pool`` that timed out is judged by its last failure to connect, which the
    message names after the timeout; with none, its connections were all in use or
    failed their check, which a retry may outlive.
    """
    psycopg = require("psycopg", extra="postgres")
    pool_module = require("psycopg_pool", extra="postgres")
    try:
        yield
    except (psycopg.Error, pool_module.PoolTimeout) as exc:
        lost = "; the changes since the last save were rolled back" if losing_changes else ""
        cause: BaseException = exc
        reason = _first_line(exc, secrets)
        failure = pool.connection_class.last_failure if pool is not None else None
        if isinstance(exc, pool_module.PoolTimeout) and failure is not None:
            cause = failure
            reason = f"{reason}: {_first_line(failure, secrets)}"
        error = StoreUnavailableError if _unreachable(cause) else StoreError
        raise error(f"PostgreSQL at {shown} failed: {reason}{lost}") from exc


def _first_line(exc: BaseException, secrets: Sequence[str]) -> str:
    """The driver's message without the URL's ``secrets``; libpq's detail lines dropped."""
    text = scrub_secrets(str(exc).strip(), secrets)
    return text.splitlines()[0] if text else type(exc).__name__


_NO_ANSWER_STATES = ("57014", "57P01", "57P02", "57P03", "53300")
"""Server-reported states a retry outlives: a statement past ``statement_timeout``, a
server shutting down, crashed, starting up, or out of connection slots (with class
``08``, connection exceptions)."""
_NOT_ACCEPTING_NOW = (
    "too many clients already",  # 53300: max_connections
    "remaining connection slots are reserved",  # 53300: the rest are for superusers
    "too many connections for",  # 53300: a role's or a database's CONNECTION LIMIT
    "the database system is starting up",  # 57P03
    "the database system is shutting down",  # 57P03
    "the database system is in recovery mode",  # 57P03: restarting after a crash
    "the database system is not yet accepting connections",  # 57P03: recovering
    "the database system is not accepting connections",  # 57P03: a standby, no hot standby
)
"""The server's texts for the states above when it refuses a connection: libpq keeps
no SQLSTATE for a failed connect, only the server's ``FATAL:`` message, in English
unless the server's ``lc_messages`` says otherwise. Every other ``FATAL:`` at connect
(a wrong password, a role not permitted to log in, a database or role that does not
exist) is the server's refusal, which a retry meets again."""


def _unreachable(exc: BaseException) -> bool:
    """Whether the server could not be reached or did not answer in time.

    The pool's timeout with no failure to connect behind it (every connection in
    use, or failing its check), the driver's own connection failures (refused,
    reset, closed mid-reply, cut off by ``_answered_within``), which carry no
    SQLSTATE, and the states above, whose refusals of a connection carry none
    either and are known by their text. A connection the server refused for good (a
    wrong password, a database or role that does not exist) fails the same way
    again: that stays a plain ``StoreError``.
    """
    psycopg = require("psycopg", extra="postgres")
    pool_module = require("psycopg_pool", extra="postgres")
    if isinstance(exc, pool_module.PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    if state is None:
        text = str(exc)
        return "FATAL:" not in text or any(reason in text for reason in _NOT_ACCEPTING_NOW)
    return state.startswith("08") or state in _NO_ANSWER_STATES


def table_name(url: str) -> str:
    """The ``table`` query parameter of ``url`` (checked: it is spliced into SQL)."""
    table = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)).get("table", DEFAULT_TABLE)
    if not _TABLE_NAME.fullmatch(table) or table == MANIFEST_TABLE:
        raise ConfigError(
            f"invalid table name {table!r} in the store URL",
            key="store",
            expected="postgresql://…?table=NAME with NAME of lowercase letters, digits and _",
        )
    if table.endswith(_DERIVED_SUFFIXES):
        # Tables and indexes share one name space: table kb_a's index kb_a_doc_id
        # would be the table of a tenant a_doc_id (?table=kb_{tenant}).
        raise ConfigError(
            f"table name {table!r} ends as the name of another table's index or sequence",
            key="store",
            expected=f"a name not ending in {', '.join(_DERIVED_SUFFIXES)}",
        )
    return table


def _conninfo(url: str) -> str:
    """``url`` without ``table``, which is ours, not libpq's."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "table"]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def _chunk(
    chunk_id: str, text: str, metadata: dict[str, Any], source: str | None, fields: dict[str, Any]
) -> Document:
    """A chunk as its row's columns hold it."""
    return Document.model_validate(
        {**fields, "id": chunk_id, "text": text, "metadata": metadata, "source": source}
    )


def _from_binary(data: bytes) -> npt.NDArray[np.float32]:
    """A ``vector`` in pgvector's binary form: dimension and a spare (two int16), then
    big-endian float32s. Binary results skip printing and parsing 384 decimals per row,
    which was 40% of a search's time at 30k chunks.
    """
    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


def _vector_literal(vector: npt.NDArray[np.float32]) -> str:
    """pgvector's text form of ``vector``.

    Nine significant digits give every float32 back exactly; one ``%`` over the
    row formats it about three times faster than ``repr`` of each number, in
    two thirds of the text, which is most of the time ``COPY`` of 100k chunks
    takes on the client.
    """
    return "[" + _row_format(len(vector)) % tuple(vector.tolist()) + "]"


@functools.cache
def _row_format(dimension: int) -> str:
    return ",".join(["%.9g"] * dimension)


def _filter_sql(filters: MetadataFilter) -> tuple[str, list[object]]:
    """``filters`` as JSONB containment, which keeps types apart as the FAISS filter does.

    ``{"k": "1"}`` and ``{"k": 1}`` are different documents to ``@>``; a ``None``
    value also matches chunks without the key, as ``dict.get`` does. An empty
    list of values matches nothing (an empty ``OR`` was a syntax error, which
    rolled back a writer's unsaved changes); so does a name or value holding
    U+0000 or a lone surrogate, which no stored chunk holds (``add`` refuses it)
    and ``jsonb`` cannot take as a parameter (the server's refusal, or the
    driver's, rolled back the same changes).
    """
    jsonb = require("psycopg.types.json", extra="postgres").Jsonb
    clauses: list[str] = []
    parameters: list[object] = []
    for name, values in filter_key(filters):
        alternatives = []
        for _, value in values:
            if unstorable((name, value), nul=True):
                continue
            alternatives.append("metadata @> %s")
            parameters.append(jsonb({name: value}))
            if value is None:
                alternatives.append("NOT metadata ? %s")
                parameters.append(name)
        clauses.append("(" + (" OR ".join(alternatives) or "FALSE") + ")")
    return " AND ".join(clauses) or "TRUE", parameters
