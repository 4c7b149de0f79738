"""A persistent vector store: FAISS index + docstore + manifest in one folder.

Crash safety comes from generations. A save writes ``index.<g>.faiss``,
``vectors.<g>.npy``, ``alive.<g>.npy`` and ``docstore.<g>.jsonl`` for a new
generation ``g``, each atomically (temp file + rename), then atomically replaces
``manifest.json``, which names the generation, and only then deletes the
generations before the one it replaced. A writer killed at any point leaves the
previous manifest pointing at complete files, so the previous index stays
loadable (``docs/durability.md``).

Readers take no lock: they read the manifest and load exactly the generation
it names. The generation a save replaces is kept until the next save, and a
reader that still finds a file gone (two saves while it loaded) re-reads the
manifest and loads the newer generation. A long-lived reader (the proxy's
retriever) calls ``refresh`` before it searches: one ``stat`` of the manifest,
and a load only when another process saved since. A save is told from the file
the manifest is (device, inode, mtime and size), not from its generation
number: a store deleted and built again, or a folder swapped for another,
starts over at generation 1, and a reader that compared numbers kept serving
the old store's chunks.

Writers serialise on an ``flock`` of ``.lock`` in the folder, held across a
read-modify-write: a save first reloads a generation another writer saved since
this store was opened and replays its own unsaved adds and deletes on top, so
two processes indexing into one store both keep their documents.

The manifest records the embedder name and dimension: opening a store with
another embedder is a ``StoreError``, since mixing vector spaces silently returns
nonsense. Nothing is pickled (npy with ``allow_pickle=False``, JSON, FAISS's own
serialization).
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from ctxproto.documents import Document
from ctxproto.errors import StoreError
from ctxproto.stores.atomic import atomic_write_bytes, atomic_write_text
from ctxproto.stores.docstore import DocStore, MetadataFilter
from ctxproto.stores.vector_index import IndexKind, VectorIndex

__all__ = ["FORMAT_VERSION", "StoreHit", "StoreManifest", "VectorStore"]

log = logging.getLogger("ctxproto.stores")

FORMAT_VERSION = 1
COMPACT_DEAD_FRACTION = 0.25
LOAD_ATTEMPTS = 5  # a reader retries when saves keep replacing the generation it read
ManifestFile = tuple[int, int, int, int]
"""Which manifest file a store loaded: device, inode, mtime (ns) and size. Every
save replaces the file (a new inode), so this changes whenever anyone saves."""


class StoreManifest(BaseModel):
    """What a store folder holds; written last on every save."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    embedder: str
    dimension: int
    count: int
    chunks: int
    index_kind: str
    requested_kind: IndexKind = "auto"
    hnsw_threshold: int = 20_000
    generation: int = 0


@dataclass(frozen=True)
class StoreHit:
    """One search result: the chunk, its cosine score and its slot."""

    document: Document
    score: float
    slot: int


class VectorStore:
    """Chunks and their vectors, searchable by FAISS and saved atomically to ``path``.

    Opening a folder that holds a store loads it and checks ``embedder`` and
    ``dimension`` against its manifest; an empty or missing folder starts a new store.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        embedder: str,
        dimension: int,
        kind: IndexKind = "auto",
        hnsw_threshold: int = 20_000,
    ) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self.generation = 0
        self._loaded_file: ManifestFile | None = None
        """The manifest file whose generation is in memory (``None``: none was)."""
        self._unsaved: list[Callable[[], object]] = []
        for _ in range(LOAD_ATTEMPTS):
            found = self._read_manifest_file(self.path)
            if found is None:
                self.index = VectorIndex(dimension, kind=kind, hnsw_threshold=hnsw_threshold)
                self.docstore = DocStore()
                return
            self._check_embedder(found[0], dimension)
            if self._load(*found):
                return
        raise StoreError(
            f"the store at {self.path} changed {LOAD_ATTEMPTS} times while it was being "
            "opened; try again when its writers are done"
        )

    def _check_embedder(self, manifest: StoreManifest, dimension: int | None = None) -> None:
        dimension = self.index.dimension if dimension is None else dimension
        if manifest.embedder != self.embedder or manifest.dimension != dimension:
            raise StoreError(
                f"the store at {self.path} was built with embedder '{manifest.embedder}' "
                f"(dimension {manifest.dimension}); it cannot be used with '{self.embedder}' "
                f"(dimension {dimension}): rebuild it with `ctxproto index`"
            )

    @staticmethod
    def ensure_writable(path: Path) -> None:
        """Create the folder if needed and check that a save could write there.

        Callers about to do minutes of embedding call this first, so a store path
        that is a file or a read-only folder fails before the work, not after it.
        """
        try:
            path.mkdir(parents=True, exist_ok=True)
            with (path / ".lock").open("a"):
                pass
        except OSError as exc:
            raise StoreError(f"cannot write the store folder {path}: {exc.strerror}") from exc

    @staticmethod
    def read_manifest(path: Path) -> StoreManifest | None:
        """The manifest at ``path``, ``None`` when there is no store, ``StoreError`` if corrupt."""
        found = VectorStore._read_manifest_file(path)
        return None if found is None else found[0]

    @staticmethod
    def _read_manifest_file(path: Path) -> tuple[StoreManifest, ManifestFile] | None:
        """``read_manifest``, and which file it read (taken from the open file, so the
        two always agree even when a save replaces the manifest meanwhile)."""
        file = path / "manifest.json"
        try:
            with file.open("rb") as handle:
                identity = _identity(os.fstat(handle.fileno()))
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):  # no store (``path`` may be a file)
            return None
        except OSError as exc:
            raise StoreError(f"{file} is not a readable ctxproto store manifest") from exc
        try:
            manifest = StoreManifest.model_validate_json(data)
        except ValidationError as exc:
            # the path, never the contents: a manifest may be a link to any file
            raise StoreError(f"{file} is not a readable ctxproto store manifest") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise StoreError(
                f"{file} has format version {manifest.format_version}; "
                f"this ctxproto reads version {FORMAT_VERSION}"
            )
        return manifest, identity

    def refresh(self) -> bool:
        """Load the generation another process saved since this one loaded; ``True`` if so.

        Without it a reader kept serving the documents it opened with until it was
        restarted, deleted ones included. Costs one ``stat`` when nothing changed.
        A store with unsaved changes of its own is left alone: ``save`` rebases
        them onto the newer generation. A store whose manifest is gone (deleted
        for a rebuild) keeps serving what it loaded until a new one is saved.
        """
        if self._unsaved:
            return False
        try:
            current = _identity((self.path / "manifest.json").stat())
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"the store at {self.path} is unreadable: {exc.strerror}") from exc
        if current == self._loaded_file:
            return False
        for _ in range(LOAD_ATTEMPTS):
            found = self._read_manifest_file(self.path)
            if found is None or self._is_loaded(*found):
                return False
            self._check_embedder(found[0])
            if self._load(*found):
                return True
        raise StoreError(
            f"the store at {self.path} changed {LOAD_ATTEMPTS} times while it was being "
            "reloaded; try again when its writers are done"
        )

    @property
    def count(self) -> int:
        """Documents in the store."""
        return len(self.docstore)

    @property
    def chunk_count(self) -> int:
        return len(self.index)

    @property
    def index_kind(self) -> str:
        return self.index.kind

    def add(
        self, doc_id: str, chunks: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> None:
        """Add (or replace) document ``doc_id`` with its chunks and their normalized vectors."""
        if not chunks:
            raise StoreError(f"document '{doc_id}' has no chunks to add")
        if len(chunks) != len(vectors):
            raise StoreError(f"{len(chunks)} chunks but {len(vectors)} vectors for '{doc_id}'")
        self._add(doc_id, chunks, vectors)
        self._unsaved.append(partial(self._add, doc_id, chunks, vectors))

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many chunks were removed."""
        removed = self._delete(doc_ids)
        self._unsaved.append(partial(self._delete, list(doc_ids)))
        return removed

    def document_ids(self) -> list[str]:
        """The ids of the documents in the store, sorted, unsaved changes included."""
        return sorted(self.docstore.slots_by_doc)

    def chunks_of(self, doc_id: str) -> list[Document]:
        """The chunks stored for ``doc_id``, in order, unsaved changes included."""
        records = self.docstore.records
        return [r for s in self.docstore.slots_by_doc.get(doc_id, []) if (r := records[s])]

    def _add(
        self, doc_id: str, chunks: Sequence[Document], vectors: npt.NDArray[np.float32]
    ) -> None:
        """The index first: when it refuses the vectors, the document it replaces is kept.

        The new slots follow the last record whether or not old ones were freed
        (deleted slots stay until ``compact``), so the docstore appends in step.
        """
        self.index.add(vectors)
        self._delete([doc_id])
        self.docstore.append(doc_id, chunks)

    def _delete(self, doc_ids: Sequence[str]) -> int:
        removed = 0
        for doc_id in doc_ids:
            slots = self.docstore.pop_document(doc_id)
            self.index.remove(np.asarray(slots, dtype=np.int64))
            removed += len(slots)
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
        allowed = self.docstore.filter_mask(filters) if filters else None
        hits = self.index.search(vector, k, allowed=allowed)
        out = []
        for score, slot in zip(hits.scores.tolist(), hits.slots.tolist(), strict=True):
            record = self.docstore.records[slot]
            if record is None or (min_score is not None and score < min_score):
                continue
            out.append(StoreHit(record, score, slot))
        return out

    def lexical_search(
        self, text: str, k: int, *, filters: MetadataFilter | None = None
    ) -> list[StoreHit]:
        """The ``k`` chunks with the best BM25 score for ``text`` that match ``filters``.

        Only chunks that share a word with ``text`` are returned; the index is
        built from the docstore on the first call after a change.
        """
        within = self.docstore.filter_mask(filters) if filters else None
        scores = self.docstore.lexical_index().scores(text, within)
        found = int(np.count_nonzero(scores > 0))
        best = np.argsort(-scores, kind="stable")[: min(k, found)]
        hits = []
        for slot in best.tolist():
            record = self.docstore.records[slot]
            if record is not None:
                hits.append(StoreHit(record, float(scores[slot]), slot))
        return hits

    def vectors_of(self, slots: Sequence[int]) -> npt.NDArray[np.float32]:
        return self.index.vectors[np.asarray(slots, dtype=np.int64)]

    def ping(self) -> None:
        """Searches run on the index in memory: there is no server to reach."""

    def close(self) -> None:
        """Nothing stays open: each load and save opens its files and closes them."""

    def save(self) -> None:
        """Write a new generation atomically, then the manifest, then drop old generations.

        A save the file system refuses (a full disk, a folder made read-only, a
        directory where a file goes) is a ``StoreError`` naming the folder, and
        takes back what it wrote of the new generation: the store opens as it was,
        a full disk is left no fuller than before, and the changes stay in memory
        for a ``save`` once there is room. Raised as it was, the ``OSError`` ended
        ``ctxproto index`` in a traceback and left the partial generation on a
        disk with no room for the next try. Once the manifest names the new
        generation the save is done: old files it cannot remove are a warning.
        """
        try:
            self._save()
        except OSError as exc:
            raise StoreError(f"cannot save the store at {self.path}: {exc.strerror}") from exc

    def _save(self) -> None:
        with self._writer_lock():
            self._catch_up()
            if self.index.slot_count - len(self.index) > COMPACT_DEAD_FRACTION * max(
                1, self.index.slot_count
            ):
                self.docstore.remap(self.index.compact())
            records, slots = len(self.docstore.records), self.index.slot_count
            if records != slots:  # such a generation would never open again
                raise StoreError(
                    f"the store at {self.path} holds {records} chunk records for {slots} "
                    "vectors; refusing to save it"
                )
            previous = self._latest_generation()
            generation = previous + 1
            try:
                self._write_generation(generation)
            except OSError:
                self._discard_unnamed(generation)
                raise
            self.generation = generation
            self._loaded_file = _identity((self.path / "manifest.json").stat())  # under the lock
            self._unsaved.clear()
            # The save went through once the manifest names the new generation: old
            # files left behind are only disk space, which the next save takes back,
            # not a failure to report (its caller would retry a save that was done).
            try:
                self._drop_generations_except(generation, previous)
            except OSError as exc:
                log.warning(
                    "saved the store at %s, but could not remove its old files (%s); "
                    "the next save removes them",
                    self.path,
                    exc.strerror,
                )

    def _write_generation(self, generation: int) -> None:
        """The parts of ``generation``, then the manifest that names it."""
        files = self._files(generation)
        atomic_write_bytes(files["index"], self.index.to_bytes())
        atomic_write_bytes(files["vectors"], _npy(self.index.vectors))
        atomic_write_bytes(files["alive"], _npy(self.index.alive))
        atomic_write_bytes(files["docstore"], self.docstore.to_jsonl())
        manifest = StoreManifest(
            embedder=self.embedder,
            dimension=self.index.dimension,
            count=self.count,
            chunks=self.chunk_count,
            index_kind=self.index.kind,
            requested_kind=self.index.requested_kind,
            hnsw_threshold=self.index.hnsw_threshold,
            generation=generation,
        )
        atomic_write_text(self.path / "manifest.json", manifest.model_dump_json(indent=2))

    def _discard_unnamed(self, generation: int) -> None:
        """Remove the files of ``generation``, whose save failed, unless the manifest
        names it: its rename went through and only the folder's sync failed.

        Called under the writer lock, so no other writer is writing ``generation``,
        and no reader loads it while no manifest names it. Best effort: the save's
        own error is the one to report, and the next save removes what is left.
        """
        try:
            current = self.read_manifest(self.path)
        except StoreError:
            return  # unsure which generation the manifest names: keep the files
        if current is not None and current.generation == generation:
            return
        for file in self._files(generation).values():
            with suppress(OSError):
                file.unlink(missing_ok=True)

    def _catch_up(self) -> None:
        """Rebase this store's unsaved changes onto a generation another writer saved.

        Two writers that opened the same generation would otherwise each save
        their own changes over it, and the second save would silently drop the
        first one's documents; a store built again from scratch meanwhile (at a
        generation number this one may hold too) would be overwritten by the
        deleted one. Called under the writer lock, so the reload, the replay and
        the save are one read-modify-write.
        """
        found = self._read_manifest_file(self.path)
        if found is None or self._is_loaded(*found):
            return
        self._check_embedder(found[0])
        if not self._load(*found):
            raise StoreError(f"the store at {self.path} changed while its writer lock was held")
        for change in self._unsaved:
            change()

    def _is_loaded(self, manifest: StoreManifest, manifest_file: ManifestFile) -> bool:
        """Whether ``manifest`` is the generation in memory: the same file and the same
        generation number. The file tells a store built again from scratch (at a
        number this one may hold too); the number tells a save whose new manifest
        reused the old one's inode, size and timestamp tick."""
        return manifest_file == self._loaded_file and manifest.generation == self.generation

    def _load(self, manifest: StoreManifest, manifest_file: ManifestFile) -> bool:
        """Load the generation ``manifest`` (read from ``manifest_file``) names; ``False``
        when a newer save removed it."""
        files = self._files(manifest.generation)
        try:
            vectors = np.load(files["vectors"], allow_pickle=False)
            alive = np.load(files["alive"], allow_pickle=False)
            index_bytes = files["index"].read_bytes()
            with files["docstore"].open(encoding="utf-8") as handle:
                docstore = DocStore.from_jsonl(handle)
            _check_parts(vectors, alive, len(docstore.records), manifest.dimension)
            index = VectorIndex.restore(
                vectors.astype(np.float32, copy=False),
                alive,
                index_bytes,
                kind=manifest.requested_kind,
                hnsw_threshold=manifest.hnsw_threshold,
            )
        except FileNotFoundError as exc:
            current = self.read_manifest(self.path)
            if current is not None and current.generation != manifest.generation:
                return False
            raise StoreError(
                f"the store at {self.path} is incomplete: {Path(str(exc.filename)).name} is missing"
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"the store at {self.path} is unreadable: {Path(str(exc.filename)).name}: "
                f"{exc.strerror}"
            ) from exc
        except StoreError as exc:
            raise StoreError(f"the store at {self.path}: {exc}") from exc
        except ValueError as exc:  # the file names, never the contents (see read_manifest)
            raise StoreError(
                f"the store at {self.path} is corrupt: generation {manifest.generation} "
                "does not hold valid vectors and chunk records"
            ) from exc
        self.index = index
        self.docstore = docstore
        self.generation = manifest.generation
        self._loaded_file = manifest_file
        return True

    def _files(self, generation: int) -> dict[str, Path]:
        return {
            "index": self.path / f"index.{generation}.faiss",
            "vectors": self.path / f"vectors.{generation}.npy",
            "alive": self.path / f"alive.{generation}.npy",
            "docstore": self.path / f"docstore.{generation}.jsonl",
        }

    def _latest_generation(self) -> int:
        manifest = self.read_manifest(self.path)
        return max(self.generation, manifest.generation if manifest else 0)

    def _drop_generations_except(self, *keep: int) -> None:
        """Older generations, and temp files a killed writer left behind.

        The generation just replaced is kept: a reader that read the previous
        manifest a moment ago is still loading its files. A reader that loses
        even that race finds a file gone and a newer manifest, and loads that.
        """
        current = {file for generation in keep for file in self._files(generation).values()}
        patterns = ("index.*.faiss", "vectors.*.npy", "alive.*.npy", "docstore.*.jsonl", ".*.tmp")
        for pattern in patterns:
            for file in self.path.glob(pattern):
                if file not in current:
                    file.unlink(missing_ok=True)

    @contextmanager
    def _writer_lock(self) -> Iterator[None]:
        """One writer at a time per folder (an advisory ``flock``)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _check_parts(
    vectors: npt.NDArray[np.generic], alive: npt.NDArray[np.generic], records: int, dimension: int
) -> None:
    """A ``ValueError`` unless a generation's parts are what ``save`` writes: a float
    row of ``dimension`` and a live flag per slot, and a chunk record per slot. Files
    of another shape or type (another program's, damaged ones) otherwise failed deep
    inside the load with whatever numpy or FAISS raised."""
    if vectors.ndim != 2 or vectors.shape[1] != dimension or vectors.dtype.kind != "f":
        raise ValueError(f"vectors of shape {vectors.shape} and type {vectors.dtype}")
    if alive.shape != (len(vectors),) or alive.dtype.kind != "b":
        raise ValueError(f"live flags of shape {alive.shape} and type {alive.dtype}")
    if records != len(vectors):
        raise ValueError(f"{records} chunk records for {len(vectors)} vectors")


def _identity(stat: os.stat_result) -> ManifestFile:
    return (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _npy(array: npt.NDArray[np.generic]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
