"""Searches of the FAISS index under filters: exact for small allowed sets, a widened
graph walk for large ones."""

from __future__ import annotations

import numpy as np
import pytest

from ctxproto.stores.vector_index import IndexKind, VectorIndex

DIM = 16
SLOTS = 10_000


def _unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    normalized: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


def _built(kind: IndexKind) -> VectorIndex:
    index = VectorIndex(DIM, kind=kind)
    index.add(_unit(SLOTS, seed=0))
    return index


@pytest.fixture(scope="module")
def hnsw_index() -> VectorIndex:
    return _built("hnsw")


@pytest.fixture(scope="module")
def ivf_index() -> VectorIndex:
    return _built("ivf")


def _true_best(index: VectorIndex, query: np.ndarray, allowed: np.ndarray, k: int) -> list[int]:
    slots = np.flatnonzero(allowed)
    best: list[int] = slots[np.argsort(-(index.vectors[slots] @ query))[:k]].tolist()
    return best


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_a_selective_filter_returns_the_true_top_k(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """20 allowed of 10k: a graph walk at efSearch 96 recalled about half of the top 5,
    and the 16 IVF lists probed rarely held any of the 20."""
    index: VectorIndex = request.getfixturevalue(f"{kind}_index")
    allowed = np.zeros(SLOTS, dtype=bool)
    allowed[np.random.default_rng(1).choice(SLOTS, 20, replace=False)] = True
    for query in _unit(30, seed=2):
        hits = index.search(query, 5, allowed=allowed)
        assert hits.slots.tolist() == _true_best(index, query, allowed, 5)
        assert hits.scores == pytest.approx(index.vectors[hits.slots] @ query, abs=1e-5)


def test_a_broad_filter_on_hnsw_still_recalls_the_top_k(hnsw_index: VectorIndex) -> None:
    allowed = np.random.default_rng(3).random(SLOTS) < 0.6  # past the exact-scoring size
    queries = _unit(30, seed=4)
    found = 0
    for query in queries:
        hits = hnsw_index.search(query, 10, allowed=allowed).slots.tolist()
        assert all(allowed[hits])
        found += len(set(hits) & set(_true_best(hnsw_index, query, allowed, 10)))
    assert found >= 0.95 * 10 * len(queries)


def test_vectors_tied_at_the_kth_score_make_the_cut_oldest_first_on_the_exact_search():
    index = VectorIndex(4)
    best = np.asarray([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    tied = np.asarray([[0.6, 0.8, 0.0, 0.0]], dtype=np.float32)
    other = np.asarray([[0.0, 0.0, 1.0, 0.0]], dtype=np.float32)
    index.add(other)  # slot 0, removed below: searches run exactly from then on
    index.add(np.repeat(tied, 6, axis=0))  # slots 1 to 6, all at the same score
    index.add(best)  # slot 7
    index.remove(np.asarray([0]))
    for _ in range(20):  # partitioning picks among ties as it likes; the cut must not
        hits = index.search(best[0], 3)
        assert hits.slots.tolist() == [7, 1, 2]


def test_an_ivf_index_grown_one_batch_at_a_time_is_trained_again_as_it_grows() -> None:
    """Trained once, on its first vectors, an index built a document at a time (as
    ``ctxproto index`` builds one) kept 16 lists for every size: 300 vectors in
    batches of 5 had 16, against 69 when added at once, each search probing all."""
    index = VectorIndex(DIM, kind="ivf")
    vectors = _unit(300, seed=5)
    for start in range(0, 300, 5):
        index.add(vectors[start : start + 5])
    assert index.kind == "ivf" and index._index.nlist >= int(4 * 300**0.5) // 2
    assert index._index.ntotal == 300
    hits = index.search(vectors[123], 1)
    assert hits.slots.tolist() == [123]


def test_an_empty_ivf_index_is_flat_as_it_is_until_it_can_train() -> None:
    """It said "ivf" while empty, "flat" after its first few vectors, "ivf" at 16."""
    index = VectorIndex(DIM, kind="ivf")
    assert index.kind == "flat"
    index.add(_unit(16, seed=6))
    assert index.kind == "ivf"
