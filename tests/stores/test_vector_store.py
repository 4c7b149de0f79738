"""The vector stores: filters, persistence and mismatches on FAISS and on pgvector;
index kinds, crash safety and generations of the FAISS folder."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from ctxproto.documents import Document
from ctxproto.errors import ConfigError, StoreError
from ctxproto.stores.vector_backend import VectorBackend, open_vector_store
from ctxproto.stores.vector_index import VectorIndex
from ctxproto.stores.vector_store import VectorStore

DIM = 16

Opener = Callable[..., VectorBackend]


@pytest.fixture(params=["faiss", "pgvector"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens one store location (a folder, or a table on the test PostgreSQL) each call."""
    location = (
        str(tmp_path / "store") if request.param == "faiss" else request.getfixturevalue("pg_url")
    )
    opened: list[VectorBackend] = []

    def opener(embedder: str = "test-embedder", dimension: int = DIM) -> VectorBackend:
        store = open_vector_store(location, embedder=embedder, dimension=dimension)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    normalized: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return normalized


def _store(path: Path, **kwargs: object) -> VectorStore:
    return VectorStore(path, embedder="test-embedder", dimension=DIM, **kwargs)  # type: ignore[arg-type]


def _fill(store: VectorBackend, docs: int, chunks: int = 2, seed: int = 0) -> np.ndarray:
    vectors = _vectors(docs * chunks, seed)
    for d in range(docs):
        parts = [
            Document(
                id=f"d{d}#{c}",
                text=f"doc {d} chunk {c}",
                metadata={"lang": "en" if d % 2 else "de"},
            )
            for c in range(chunks)
        ]
        store.add(f"d{d}", parts, vectors[d * chunks : (d + 1) * chunks])
    return vectors


def test_search_finds_the_exact_vector_and_respects_filters_and_threshold(
    open_store: Opener,
) -> None:
    store = open_store()
    vectors = _fill(store, 20)
    hits = store.search(vectors[7], 3)
    assert hits[0].document.id == "d3#1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    filtered = store.search(vectors[7], 5, filters={"lang": "de"})
    assert filtered and all(h.document.metadata["lang"] == "de" for h in filtered)
    assert all(h.score >= 0.5 for h in store.search(vectors[7], 40, min_score=0.5))


def test_filters_that_print_alike_do_not_share_results(open_store: Opener) -> None:
    store = open_store()
    vectors = _vectors(2)
    store.add("a", [Document(id="a#0", text="acme", metadata={"tenant": "acme"})], vectors[:1])
    store.add("b", [Document(id="b#0", text="odd", metadata={"tenant": "1"})], vectors[1:])
    assert [h.document.id for h in store.search(vectors[0], 5, filters={"tenant": {"acme"}})] == [
        "a#0"
    ]
    assert store.search(vectors[0], 5, filters={"tenant": "{'acme'}"}) == []
    assert [h.document.id for h in store.search(vectors[0], 5, filters={"tenant": "1"})] == ["b#0"]
    assert store.search(vectors[0], 5, filters={"tenant": 1}) == []


def test_a_boolean_filter_never_matches_a_number_nor_a_number_a_boolean(
    open_store: Opener,
) -> None:
    """Python's ``True == 1`` made the folder store answer what PostgreSQL does not."""
    store = open_store()
    vectors = _vectors(3)
    for n, value in enumerate([True, 1, 1.0]):
        chunk = Document(id=f"d{n}#0", text="x", metadata={"public": value})
        store.add(f"d{n}", [chunk], vectors[n : n + 1])

    def found(value: object) -> list[str]:
        return sorted(h.document.id for h in store.search(vectors[0], 5, filters={"public": value}))

    assert found(True) == ["d0#0"]
    assert found(1) == found(1.0) == ["d1#0", "d2#0"]
    assert found([False, 0]) == []


def test_equal_scores_come_back_oldest_first_on_both_stores(open_store: Opener) -> None:
    """The same chunk in several documents (a footer, a copied answer) ties: which one
    is shown must not depend on the store, nor on whether anything was ever deleted."""
    store = open_store()
    vector = _vectors(1)
    for n in range(5):
        chunk = Document(id=f"d{n}#0", text="footer", metadata={"odd": n % 2 == 1})
        store.add(f"d{n}", [chunk], vector)

    def ids(**kwargs: object) -> list[str]:
        return [h.document.id for h in store.search(vector[0], 10, **kwargs)]  # type: ignore[arg-type]

    assert ids() == ["d0#0", "d1#0", "d2#0", "d3#0", "d4#0"]
    assert ids(filters={"odd": False}) == ["d0#0", "d2#0", "d4#0"]
    store.delete(["d1"])
    assert ids() == ["d0#0", "d2#0", "d3#0", "d4#0"]


def test_copies_among_other_chunks_tie_oldest_first_once_a_document_was_deleted(
    open_store: Opener,
) -> None:
    """A deletion sends the folder store's searches to its exact scoring, where BLAS
    summed the rows in blocks: the copies of a chunk scored a few ulps apart by where
    they fell, came in that order, and a newer copy made the cut at the k-th place
    (which copies make it is documented as fixed on the exact search only)."""
    store = open_store()
    for n, vector in enumerate(_vectors(6, seed=3)):
        store.add(f"o{n}", [Document(id=f"o{n}#0", text="other")], vector[None])
    for n in range(8):
        store.add(f"c{n}", [Document(id=f"c{n}#0", text="footer")], _vectors(1, seed=4))
    store.delete(["o0"])
    copies = [f"c{n}#0" for n in range(8)]
    for query in _vectors(20, seed=5):
        ids = [h.document.id for h in store.search(query, 20)]
        assert [i for i in ids if i in copies] == copies
        if isinstance(store, VectorStore):
            cut = ids.index("c0#0") + 3
            assert [h.document.id for h in store.search(query, cut)][-3:] == copies[:3]


def test_an_empty_list_of_allowed_values_matches_nothing(open_store: Opener) -> None:
    """A user in no team asks with ``{"team": []}``: no chunk, on either store, and a
    writer's unsaved documents stay (a failed search rolled them back on PostgreSQL)."""
    store = open_store()
    vectors = _fill(store, 4)
    assert store.search(vectors[0], 5, filters={"lang": []}) == []
    assert store.search(vectors[0], 5, filters={"lang": "en", "other": set()}) == []
    assert store.count == 4


@pytest.mark.parametrize("value", [{"nested": "dict"}, object(), [["acme"]], b"acme"])
def test_a_filter_value_of_an_unsupported_type_is_a_config_error(
    open_store: Opener, value: object
) -> None:
    store = open_store()
    _fill(store, 2)
    with pytest.raises(ConfigError, match=r"filters\.lang"):
        store.search(_vectors(1)[0], 3, filters={"lang": value})


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_every_index_kind_recalls_and_skips_deleted(kind: str) -> None:
    index = VectorIndex(DIM, kind=kind)  # type: ignore[arg-type]
    vectors = _vectors(600)
    index.add(vectors)
    assert index.kind == kind
    found = sum(int(index.search(vectors[i], 1).slots[0]) == i for i in range(0, 600, 10))
    assert found >= 55
    index.remove(np.asarray([10, 20]))
    assert 10 not in index.search(vectors[10], 5).slots.tolist()
    assert len(index) == 598


def test_auto_kind_switches_to_hnsw_as_the_collection_grows() -> None:
    index = VectorIndex(DIM, kind="auto", hnsw_threshold=300)
    index.add(_vectors(200))
    assert index.kind == "flat"
    index.add(_vectors(200, seed=1))
    assert index.kind == "hnsw"
    assert int(index.search(_vectors(200, seed=1)[5], 1).slots[0]) == 205


def test_save_load_round_trip_with_incremental_add_and_delete(open_store: Opener) -> None:
    store = open_store()
    vectors = _fill(store, 10)
    store.save()
    again = open_store()
    assert again.count == 10 and again.chunk_count == 20
    assert again.search(vectors[4], 1)[0].document.id == "d2#0"
    assert again.delete(["d2"]) == 2
    again.add("d2", [Document(id="d2#new", text="replaced")], _vectors(1, seed=9))
    again.add("d3", [Document(id="d3#new", text="replaced too")], _vectors(1, seed=8))
    again.save()
    third = open_store()
    assert third.count == 10 and third.chunk_count == 18
    assert third.search(_vectors(1, seed=9)[0], 1)[0].document.id == "d2#new"
    assert all(h.document.id not in ("d2#0", "d3#0") for h in third.search(vectors[4], 20))


def test_changes_are_seen_by_other_readers_only_after_save(open_store: Opener) -> None:
    writer = open_store()
    vectors = _fill(writer, 3)
    assert writer.count == 3
    assert open_store().count == 0
    writer.save()
    assert open_store().count == 3
    writer.delete(["d0"])
    assert open_store().search(vectors[0], 1)[0].document.id == "d0#0"


def test_a_save_writes_a_manifest_and_keeps_the_replaced_generation(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fill(store, 10)
    store.save()
    store.delete(["d2"])
    store.save()
    manifest = VectorStore.read_manifest(tmp_path)
    assert manifest is not None and manifest.embedder == "test-embedder"
    assert manifest.dimension == DIM and manifest.count == 9 and manifest.format_version == 1
    # the current generation and the one it replaced, which a reader may still be loading
    assert sorted(p.name for p in tmp_path.glob("index.*.faiss")) == [
        "index.1.faiss",
        "index.2.faiss",
    ]


def test_an_empty_store_saves_and_opens_again(open_store: Opener) -> None:
    open_store().save()
    again = open_store()
    assert again.count == 0 and again.search(_vectors(1)[0], 3) == []


def test_another_embedder_or_dimension_is_a_clear_error(open_store: Opener) -> None:
    store = open_store()
    _fill(store, 3)
    store.save()
    with pytest.raises(StoreError, match=r"embedder 'test-embedder'.*'other'"):
        open_store(embedder="other")
    with pytest.raises(StoreError, match="dimension 16"):
        open_store(dimension=384)


def test_bad_vectors_are_rejected_and_change_nothing(open_store: Opener) -> None:
    store = open_store()
    vectors = _fill(store, 3)
    with pytest.raises(StoreError, match="dimension"):
        store.add("bad", [Document(id="b", text="x")], np.ones((1, DIM + 1), dtype=np.float32))
    nan = np.full((1, DIM), np.nan, dtype=np.float32)
    with pytest.raises(StoreError, match="NaN"):
        store.add("bad", [Document(id="b", text="x")], nan)
    with pytest.raises(StoreError, match="no chunks"):
        store.add("empty", [], np.empty((0, DIM), dtype=np.float32))
    with pytest.raises(StoreError, match="NaN"):
        store.add("d1", [Document(id="d1#new", text="x")], nan)  # would replace d1
    assert store.count == 3 and store.chunk_count == 6
    assert store.search(vectors[2], 1)[0].document.id == "d1#0"


def test_an_ivf_store_holds_its_first_few_vectors_and_a_refused_add_leaves_no_trace(
    tmp_path: Path,
) -> None:
    """Five vectors cannot train IVF's lists, and the store refused them: the first
    document of an IVF store (``ctxproto index`` adds one at a time), and a save that
    compacted it below that size, failed. It is flat until it can be trained. A
    refused add must leave no vectors behind, or every later slot would name the
    wrong chunk and the saved store would not open."""
    store = _store(tmp_path, kind="ivf")
    few = [Document(id=f"few#{i}", text="x") for i in range(5)]
    broken = _vectors(5, seed=1)
    broken[2, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.add("few", few, broken)
    assert store.count == 0 and store.index.slot_count == 0
    store.add("few", few, _vectors(5, seed=1))
    assert store.index_kind == "flat"
    assert store.search(_vectors(5, seed=1)[3], 1)[0].document.id == "few#3"
    vectors = _vectors(40)
    store.add("d", [Document(id=f"d#{i}", text=f"chunk {i}") for i in range(40)], vectors)
    assert store.index_kind == "ivf"
    assert store.search(vectors[7], 1)[0].document.id == "d#7"
    store.save()
    reopened = _store(tmp_path, kind="ivf")
    assert reopened.chunk_count == 45
    assert reopened.search(vectors[7], 1)[0].document.id == "d#7"
    reopened.delete(["d"])
    reopened.save()  # compacted to five vectors: flat again
    again = _store(tmp_path, kind="ivf")
    assert again.chunk_count == 5 and again.index_kind == "flat"
    assert again.search(_vectors(5, seed=1)[3], 1)[0].document.id == "few#3"


def test_a_store_whose_records_and_vectors_differ_is_not_saved(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fill(store, 2)
    store.save()
    store.docstore.append("orphan", [Document(id="orphan#0", text="no vector")])
    with pytest.raises(StoreError, match="5 chunk records for 4 vectors"):
        store.save()
    assert _store(tmp_path).chunk_count == 4


def test_a_corrupt_manifest_or_index_is_a_store_error(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fill(store, 2)
    store.save()
    index_file = next(tmp_path.glob("index.*.faiss"))
    index_file.write_bytes(b"garbage")
    with pytest.raises(StoreError):
        _store(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest"):
        _store(tmp_path)


@pytest.mark.parametrize(
    ("part", "array"),
    [
        ("vectors", np.zeros(8, dtype=np.float32)),  # one row, not a row per slot
        ("vectors", np.float32(1.0)),  # a single number
        ("vectors", np.full((8, DIM), "x")),  # text
        ("vectors", np.zeros((8, DIM + 1), dtype=np.float32)),  # another dimension
        ("alive", np.ones((8, 2), dtype=bool)),
    ],
)
def test_an_array_of_another_shape_or_type_is_a_store_error_naming_the_store(
    tmp_path: Path, part: str, array: np.ndarray
) -> None:
    """Regression: such a file (another program's, a damaged one) was an IndexError,
    a TypeError or a ValueError from deep inside the load, naming nothing; live flags
    of another shape even opened."""
    store = _store(tmp_path)
    _fill(store, 4)
    store.save()
    np.save(tmp_path / f"{part}.1.npy", array, allow_pickle=False)
    with pytest.raises(StoreError, match=f"the store at {tmp_path} is corrupt"):
        _store(tmp_path)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from ctxproto.documents import Document
    from ctxproto.stores import vector_store
    from ctxproto.stores.vector_store import VectorStore

    real = vector_store.atomic_write_bytes
    def slow(path, data):
        real(path, data)
        print("wrote", path.name, flush=True)
        import time; time.sleep(0.4)
    vector_store.atomic_write_bytes = slow
    store = VectorStore(sys.argv[1], embedder="test-embedder", dimension=16)
    rng = np.random.default_rng(1)
    v = rng.standard_normal((50, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for i in range(50):
        store.add(f"new{i}", [Document(id=f"new{i}#0", text="new")], v[i : i + 1])
    store.save()
    """
)


def test_killing_a_writer_mid_save_leaves_the_previous_index_loadable(tmp_path: Path) -> None:
    store = _store(tmp_path)
    vectors = _fill(store, 5)
    store.save()
    lines: list[str] = []
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as writer:
        assert writer.stdout is not None
        deadline = time.monotonic() + 60
        while len(lines) < 2 and time.monotonic() < deadline:
            lines.append(writer.stdout.readline())
        writer.kill()
    assert any("wrote" in line for line in lines), lines
    survivor = _store(tmp_path)
    assert survivor.count == 5
    assert survivor.search(vectors[0], 1)[0].document.id == "d0#0"
    survivor.save()
    assert _store(tmp_path).count == 5


OPEN_THEN_WRITE = textwrap.dedent(
    """
    import sys, numpy as np
    from ctxproto.documents import Document
    from ctxproto.stores.vector_store import VectorStore

    folder, prefix = sys.argv[1], sys.argv[2]
    store = VectorStore(folder, embedder="test-embedder", dimension=16)
    print("opened", flush=True)
    sys.stdin.readline()
    rng = np.random.default_rng(len(prefix))
    v = rng.standard_normal((5, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    for i in range(5):
        store.add(f"{prefix}{i}", [Document(id=f"{prefix}{i}#0", text=prefix)], v[i : i + 1])
    store.save()
    print("saved", store.count, flush=True)
    """
)


def test_two_writers_that_opened_the_same_generation_keep_both_sets(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fill(store, 1)
    store.save()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_THEN_WRITE, str(tmp_path), prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for prefix in ("a", "bb")
    ]
    saved = []
    with contextlib.ExitStack() as running:
        for writer in writers:
            running.enter_context(writer)
            assert writer.stdout is not None
            assert writer.stdout.readline() == "opened\n"
        for writer in writers:  # the second saves over the generation it did not open
            assert writer.stdin is not None and writer.stdout is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
            saved.append(writer.stdout.readline())
            assert writer.wait(timeout=120) == 0
    assert saved == ["saved 6\n", "saved 11\n"]
    reopened = _store(tmp_path)
    assert reopened.count == 11
    assert {f"a{i}" for i in range(5)} | {f"bb{i}" for i in range(5)} <= set(
        reopened.docstore.slots_by_doc
    )


SAVE_IN_A_LOOP = textwrap.dedent(
    """
    import sys, numpy as np
    from pathlib import Path
    from ctxproto.documents import Document
    from ctxproto.stores.vector_store import VectorStore

    folder = sys.argv[1]
    store = VectorStore(folder, embedder="test-embedder", dimension=16)
    rng = np.random.default_rng(2)
    i = 0
    while not Path(folder, "stop").exists():
        v = rng.standard_normal((1, 16)).astype(np.float32)
        v /= np.linalg.norm(v)
        store.add(f"loop{i % 50}", [Document(id=f"loop{i % 50}#0", text="loop")], v)
        store.save()
        i += 1
        if i == 1:
            print("saving", flush=True)
    print("saves", i, flush=True)
    """
)


def test_opening_while_another_process_saves_always_gets_a_complete_generation(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    _fill(store, 200)
    store.save()
    with subprocess.Popen(
        [sys.executable, "-c", SAVE_IN_A_LOOP, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as saver:
        assert saver.stdout is not None
        assert saver.stdout.readline() == "saving\n"
        try:
            for _ in range(400):
                assert _store(tmp_path).count >= 200
        finally:
            (tmp_path / "stop").touch()
            saves = saver.stdout.readline()
            assert saver.wait(timeout=120) == 0
    assert int(saves.split()[1]) > 10, saves


@pytest.mark.parametrize("part", ["manifest.json", "docstore.1.jsonl"])
def test_a_store_error_names_files_but_never_quotes_them(tmp_path: Path, part: str) -> None:
    store = _store(tmp_path / "store")
    _fill(store, 2)
    store.save()
    secret = tmp_path / "passwd"
    secret.write_text('{"root": "x:0:0:SECRET-LINE"}\nroot:x:0:0:SECRET-LINE\n')
    linked = tmp_path / "store" / part
    linked.unlink()
    linked.symlink_to(secret)
    with pytest.raises(StoreError) as raised:
        _store(tmp_path / "store")
    assert "SECRET" not in str(raised.value)
    assert str(tmp_path / "store") in str(raised.value)


def test_a_store_built_again_from_scratch_is_seen_by_readers_and_kept_by_writers(
    tmp_path: Path,
) -> None:
    """A rebuild starts over at generation 1, which the running reader and writer also
    hold: they must tell the new store from the one they loaded all the same."""
    folder = tmp_path / "kb"
    first = _store(folder)
    first.add("old", [Document(id="old#0", text="old")], _vectors(1, seed=1))
    first.save()
    reader, writer = _store(folder), _store(folder)
    shutil.rmtree(folder)
    rebuilt = _store(folder)
    rebuilt.add("new", [Document(id="new#0", text="new")], _vectors(1, seed=2))
    rebuilt.save()
    assert rebuilt.generation == reader.generation == 1
    assert reader.refresh()
    assert [h.document.id for h in reader.search(_vectors(1, seed=1)[0], 5)] == ["new#0"]
    writer.add("mine", [Document(id="mine#0", text="mine")], _vectors(1, seed=3))
    writer.save()
    assert sorted(_store(folder).docstore.slots_by_doc) == ["mine", "new"]


def test_a_save_whose_manifest_looks_like_the_old_file_is_still_rebased_onto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new manifest can reuse the old one's inode, size and timestamp tick: the
    generation number must still tell a writer that another process saved since."""
    monkeypatch.setattr("ctxproto.stores.vector_store._identity", lambda stat: (1, 1, 1, 1))
    folder = tmp_path / "kb"
    first = _store(folder)
    first.add("a", [Document(id="a#0", text="a")], _vectors(1, seed=1))
    first.save()
    other = _store(folder)  # loads generation 1
    first.add("b", [Document(id="b#0", text="b")], _vectors(1, seed=2))
    first.save()  # generation 2, a manifest that looks like the first one
    other.add("c", [Document(id="c#0", text="c")], _vectors(1, seed=3))
    other.save()
    assert sorted(_store(folder).docstore.slots_by_doc) == ["a", "b", "c"]


SAVE_PAST_A_SIZE_LIMIT = textwrap.dedent(
    """
    import resource, sys, numpy as np
    from ctxproto.documents import Document
    from ctxproto.errors import StoreError
    from ctxproto.stores.vector_store import VectorStore

    store = VectorStore(sys.argv[1], embedder="test-embedder", dimension=16)
    v = np.zeros((1, 16), dtype=np.float32)
    v[0, 0] = 1.0
    # A chunk whose text alone outgrows the limit: the index, the vectors and the live
    # flags of the new generation fit, its docstore does not.
    store.add("big", [Document(id="big#0", text="word " * 40_000)], v)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # as a disk that is full
    try:
        store.save()
    except StoreError as exc:
        print("refused", exc, flush=True)
    sys.stdin.readline()  # the test looks at the folder meanwhile
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
    store.save()
    print("saved", store.count, flush=True)
    """
)


def test_a_save_the_disk_refuses_is_a_store_error_and_takes_back_what_it_wrote(
    tmp_path: Path,
) -> None:
    """A full disk in the middle of a save: a ``StoreError`` naming the folder, not a
    bare ``OSError``; the new generation's parts already written are removed, so they
    do not keep the disk full; the store opens as it was; and the same store saves
    its changes once there is room."""
    folder = tmp_path / "kb"
    store = _store(folder)
    vectors = _fill(store, 2)
    store.save()
    before = sorted(p.name for p in folder.iterdir())
    with subprocess.Popen(
        [sys.executable, "-c", SAVE_PAST_A_SIZE_LIMIT, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        refused = writer.stdout.readline()
        assert refused.startswith(f"refused cannot save the store at {folder}: "), refused
        assert "Traceback" not in refused
        assert sorted(p.name for p in folder.iterdir()) == before
        survivor = _store(folder)
        assert (survivor.count, survivor.generation) == (2, 1)
        assert survivor.search(vectors[0], 1)[0].document.id == "d0#0"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "saved 3\n"
        assert writer.wait(timeout=60) == 0
    assert sorted(_store(folder).docstore.slots_by_doc) == ["big", "d0", "d1"]


def test_old_files_a_save_cannot_remove_are_a_warning_not_a_failed_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Removing old generations failed after the new manifest was in place, and the
    save reported "cannot save" although it had gone through."""
    store = _store(tmp_path)
    _fill(store, 2)
    store.save()
    store.delete(["d1"])
    store.save()

    def refuse(path: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "unlink", refuse)
    store.delete(["d0"])
    with caplog.at_level("WARNING", logger="ctxproto.stores"):
        store.save()
    assert f"saved the store at {tmp_path}" in caplog.text
    assert "index.1.faiss" in {p.name for p in tmp_path.iterdir()}  # left for the next save
    monkeypatch.undo()
    reopened = _store(tmp_path)
    assert (reopened.generation, reopened.count) == (3, 0)
    _fill(reopened, 1, seed=1)
    reopened.save()
    assert sorted(p.name for p in tmp_path.glob("index.*.faiss")) == [
        "index.3.faiss",
        "index.4.faiss",
    ]
