"""BM25 over the chunks of a store: the index alone, and a FAISS folder's lexical search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctxproto.documents import Document
from ctxproto.errors import ConfigError
from ctxproto.stores.lexical_index import LexicalIndex
from ctxproto.stores.vector_backend import open_vector_store
from ctxproto.stores.vector_store import VectorStore

DIM = 8
ISLANDS = ("Alder", "Eastwick", "Glenrock", "Dunmore")


def _keeper(island: str) -> str:
    return f"The lighthouse on {island} Island is kept by a woman. The sea was calm that year."


def _store(path: Path) -> VectorStore:
    store = VectorStore(path, embedder="test-embedder", dimension=DIM)
    rng = np.random.default_rng(0)
    for i, island in enumerate(ISLANDS):
        vector = rng.standard_normal((1, DIM)).astype(np.float32)
        store.add(
            island.lower(),
            [Document(id=f"{island}#0", text=_keeper(island), metadata={"part": i % 2})],
            vector / np.linalg.norm(vector),
        )
    return store


def test_the_rare_word_decides_and_shared_words_weigh_little() -> None:
    index = LexicalIndex([_keeper(island) for island in ISLANDS])
    scores = index.scores("Who keeps the lighthouse on Eastwick Island?")
    assert int(np.argmax(scores)) == 1
    others = np.delete(scores, 1)
    assert np.allclose(others, others[0])  # the words every chunk shares tie the rest
    assert scores[1] > 2 * others[0]
    assert not index.scores("zebra").any()


def test_dead_slots_hold_no_words_and_case_does_not_matter() -> None:
    index = LexicalIndex(["Eastwick harbour", None, "eastwick HARBOUR pier"])
    scores = index.scores("EASTWICK")
    assert scores[1] == 0.0 and scores[0] > 0 and scores[2] > 0
    assert scores[0] > scores[2]  # the same match in a shorter chunk counts for more


def test_lexical_search_respects_filters_deletes_and_reloads(tmp_path: Path) -> None:
    store = _store(tmp_path / "store")
    question = "Who keeps the lighthouse on Eastwick Island?"
    hits = store.lexical_search(question, 2)
    assert [h.document.id for h in hits] == ["Eastwick#0", "Alder#0"]
    assert hits[0].score > hits[1].score > 0
    assert store.lexical_search("zebra", 5) == []
    assert [h.document.id for h in store.lexical_search(question, 1, filters={"part": 0})] == [
        "Alder#0"
    ]
    store.delete(["eastwick"])  # the index follows the store's changes
    assert "Eastwick#0" not in {h.document.id for h in store.lexical_search(question, 4)}
    store.add("harbour", [Document(id="harbour#0", text="Eastwick harbour")], _unit_vector())
    assert store.lexical_search("Eastwick", 4)[0].document.id == "harbour#0"
    store.save()
    again = VectorStore(tmp_path / "store", embedder="test-embedder", dimension=DIM)
    assert [h.document.id for h in again.lexical_search("Eastwick", 4)] == ["harbour#0"]


def test_a_postgresql_store_refuses_lexical_search_by_the_key_that_asks_for_it(
    pg_url: str,
) -> None:
    store = open_vector_store(pg_url, embedder="test-embedder", dimension=DIM)
    try:
        with pytest.raises(ConfigError) as info:
            store.lexical_search("Eastwick", 3)
        assert info.value.key == "lexical_weight"
    finally:
        store.close()


def _unit_vector() -> np.ndarray:
    vector = np.ones((1, DIM), dtype=np.float32)
    normalized: np.ndarray = vector / np.linalg.norm(vector)
    return normalized


def test_a_tenants_scores_do_not_depend_on_other_tenants_chunks() -> None:
    """Word rarity and average length are counted within the tenant's own chunks."""
    mine = [_keeper("Eastwick"), "Our returns policy allows thirty days."]
    others_a = ["Eastwick " * 40, "returns returns returns"]
    others_b = ["Nothing in common here at all."]
    within_a = np.array([True, True, False, False])
    within_b = np.array([True, True, False])
    query = "What is the returns policy on Eastwick?"
    scores_a = LexicalIndex(mine + others_a).scores(query, within_a)
    scores_b = LexicalIndex(mine + others_b).scores(query, within_b)
    np.testing.assert_allclose(scores_a[:2], scores_b[:2], rtol=1e-6)
    assert not scores_a[2:].any()
    # Without the mask, the other tenant's chunks change the tenant's scores.
    unmasked = LexicalIndex(mine + others_a).scores(query)
    assert not np.allclose(unmasked[:2], scores_b[:2])
