"""Fitting the cache verifier: scaling folded into the weights, folds by seed question."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.cache_verifier import (
    design,
    fit,
    fold_probe,
    identifiers_clear,
    operating_point,
    other_question_pairs,
    out_of_fold,
    probability,
    probe_basis,
    rates,
    seed_groups,
)


def _pairs() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.5).astype(np.float64)
    signal = labels + rng.normal(0, 0.6, 400)
    noise = rng.normal(0, 1, 400)
    return np.column_stack([signal, noise]), labels


def test_a_feature_on_another_scale_gets_the_same_probabilities() -> None:
    """The penalty weighs standardized features, so units do not change the model."""
    features, labels = _pairs()
    rescaled = features * np.array([1000.0, 0.001])
    plain = probability(features, *fit(features, labels))
    scaled = probability(rescaled, *fit(rescaled, labels))
    np.testing.assert_allclose(plain, scaled, atol=1e-6)
    assert ((plain >= 0.5) == (labels == 1)).mean() > 0.75


def test_pairs_that_share_a_question_share_a_fold() -> None:
    rows = [
        {"a": "How do I reset my password?", "b": "forgot my password"},
        {"a": "forgot my password", "b": "How do I reset my colleague's password?"},
        {"a": "Can dogs eat grapes?", "b": "are grapes bad for dogs"},
    ]
    groups = seed_groups(rows)
    assert groups[0] == groups[1] != groups[2]
    features, labels = _pairs()
    held_out = out_of_fold(features, labels, [str(n % 40) for n in range(400)], 0)
    assert held_out.shape == labels.shape and 0.0 < held_out.min() < held_out.max() < 1.0


def test_the_probe_folded_into_one_weight_per_value_scores_as_fitted() -> None:
    """The shipped model multiplies raw interactions by one vector; it must give the
    probabilities of the model fitted on their principal components."""
    features, labels = _pairs()
    rng = np.random.default_rng(1)
    interactions = rng.normal(0, 1, (400, 12)) + labels[:, None] * rng.normal(0, 1, 12)
    basis = probe_basis(interactions, components=3)
    inputs = design(features, interactions, basis)
    assert inputs.shape == (400, 2 + 3)
    weights, bias = fit(inputs, labels, l2=1.0)
    lexical, per_value, folded_bias = fold_probe(weights, bias, 2, basis)
    assert per_value.shape == (12,)
    folded = probability(
        np.hstack([features, interactions]), np.concatenate([lexical, per_value]), folded_bias
    )
    np.testing.assert_allclose(folded, probability(inputs, weights, bias), atol=1e-9)


def test_a_larger_penalty_shrinks_the_weights() -> None:
    features, labels = _pairs()
    loose, _ = fit(features, labels, l2=0.01)
    tight, _ = fit(features, labels, l2=100.0)
    assert abs(tight[0]) < abs(loose[0])


def _row(category: str, a: str, b: str, domain: str) -> dict[str, object]:
    hit = category in ("paraphrase", "near_repeat")
    return {
        "category": category,
        "a": a,
        "b": b,
        "hit": hit,
        "domain": domain,
        "register": "written",
    }


def test_other_question_pairs_join_two_seeds_of_one_domain_only() -> None:
    rows = [
        _row("paraphrase", "How do I reset my password?", "forgot my password", "account"),
        _row("negation", "How do I reset my password?", "How do I keep my password?", "account"),
        _row("paraphrase", "How do I delete my account?", "remove my account", "account"),
        _row("paraphrase", "Can dogs eat grapes?", "are grapes bad for dogs", "pets"),
    ]
    pairs = other_question_pairs(rows)
    assert [(p["a"], p["b"]) for p in pairs] == [
        ("How do I reset my password?", "How do I delete my account?")
    ]
    assert pairs[0]["category"] == "other_question" and pairs[0]["hit"] is False


def test_other_questions_are_bound_per_category_but_not_in_the_near_miss_rate() -> None:
    rows = [
        _row("paraphrase", "q", "p", "d"),
        _row("negation", "q", "n", "d"),
        _row("other_question", "q", "o", "d"),
    ]
    found = rates(np.array([True, False, True]), rows)
    assert found["false_hits"] == 0.0
    assert found["worst_category"] == 1.0


def test_the_operating_point_leaves_out_what_the_identifier_rule_refuses() -> None:
    """Fitting chooses its cut on the decisions the cache makes: a near miss about
    another order is refused by the rule, whatever its probability."""
    questions = [
        {
            "category": "paraphrase",
            "a": "Where is order 3622531882?",
            "b": "Where's order 3622531882?",
        },
        {
            "category": "entity_swap",
            "a": "Where is order 3622531882?",
            "b": "Where is order 3622531880?",
        },
    ]
    rows: list[dict[str, Any]] = [{**q, "hit": q["category"] == "paraphrase"} for q in questions]
    assert identifiers_clear(rows).tolist() == [True, False]
    recall, _, _ = operating_point([np.array([0.99, 0.99])], np.array([0.95, 0.99]), rows)
    assert recall == 1.0  # counted as a hit, the near miss would leave no point within bounds
