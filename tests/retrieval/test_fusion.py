"""Relative score fusion of dense and lexical scores."""

from __future__ import annotations

import numpy as np

from ctxproto.retrieval.fusion import relative_score_fusion


def _f32(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_a_clear_lexical_winner_beats_the_chunks_near_the_top_of_both() -> None:
    # Candidate 3 alone holds the question's rare word: BM25 far above the rest,
    # cosine fourth of five. Ranks alone would put it third (reciprocal rank
    # fusion, k=60: 1/64 + 1/61 against 1/61 + 1/63 and 1/62 + 1/62); the
    # margin of its BM25 score puts it first.
    dense = _f32(0.35, 0.30, 0.25, 0.20, 0.15)
    lexical = _f32(1.0, 2.5, 0.0, 9.0, 0.5)
    fused = relative_score_fusion(dense, lexical, 0.5)
    assert list(np.argsort(-fused)[:2]) == [3, 0]
    assert fused.dtype == np.float32
    assert float(fused.min()) >= 0.0 and float(fused.max()) <= 1.0


def test_the_weight_moves_between_the_two_signals() -> None:
    dense = _f32(0.9, 0.1)
    lexical = _f32(0.0, 5.0)
    assert np.allclose(relative_score_fusion(dense, lexical, 0.0), [1.0, 0.0])
    assert np.allclose(relative_score_fusion(dense, lexical, 1.0), [0.0, 1.0])
    assert np.allclose(relative_score_fusion(dense, lexical, 0.25), [0.75, 0.25])


def test_a_signal_that_ties_every_candidate_cannot_reorder_them() -> None:
    fused = relative_score_fusion(_f32(0.2, 0.5, 0.4), _f32(0.0, 0.0, 0.0), 0.5)
    assert list(np.argsort(-fused)) == [1, 2, 0]
    assert relative_score_fusion(_f32(), _f32(), 0.5).size == 0
