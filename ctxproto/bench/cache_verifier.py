"""``python -m ctxproto.bench.cache_verifier``: fit the cache's hit verifier.

Fits the logistic regression of ``stores/semantic_cache/verifier.py`` on the
dev split of the labelled pairs (``ctxproto.bench.cache_pairs``) plus the
train split of the older hand-written pairs (their categories prefixed
``old_``), the cached question ``a`` against the asked question ``b``, plus
pairs of two different seed questions of one domain (``other_question``):
the near misses alone never show the verifier two unrelated questions.

The features are the verifier's lexical ones plus the first
``COMPONENTS`` principal components of the embeddings' ``interaction``
(product and absolute difference, 768 values): a probe on all 768 would fit
a few hundred pairs by heart, four directions of most variance cannot. The
fitted probe is folded into one weight per interaction value, so a lookup
needs no projection.

The penalty, the cosine floor and the probability cut are chosen on
**out-of-fold** probabilities: five folds that keep every seed question's
pairs together, over three fold assignments. A point chosen on the rows the
model was fitted on looks better than it is (the weights have seen those
pairs); out-of-fold figures estimate held-out ones, so the margin under the
2% target only has to cover sampling noise and the shift between seed
questions: 1% on dev, two standard errors under 2% for the ~470 dev near
misses (a target of 1.5% landed above 2% on held-out seeds). The point is
the highest mean recall (paraphrases and near-repeats) whose mean false hits
stay within ``MAX_FALSE_HITS`` overall and ``MAX_CATEGORY_FALSE_HITS`` in
every negative category, with the identifier rule applied as the cache applies it.
Writes the weights as JSON beside the verifier.
Neither test split is ever read here (``ctxproto.bench.cache_guard_plot``
draws the curves).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.cache_pairs import load_pairs

__all__ = [
    "ProbeBasis",
    "design",
    "fit",
    "fitting_table",
    "fold_probe",
    "identifiers_clear",
    "main",
    "operating_point",
    "other_question_pairs",
    "out_of_fold",
    "pair_table",
    "probe_basis",
    "rates",
]

MAX_FALSE_HITS = 0.01
MAX_CATEGORY_FALSE_HITS = 0.04
L2 = 0.01
PENALTIES = (0.1, 0.3, 1.0, 3.0)
"""L2 penalties tried (on standardized features): the larger, the smoother the model."""
COMPONENTS = 4
FOLDS = 5
FLOORS = (0.3, 0.4, 0.5, 0.6)
CUTS = tuple(float(c) for c in np.linspace(0.05, 0.99, 95))
HITS = ("paraphrase", "old_paraphrase", "near_repeat")
OTHER = "other_question"
"""Two different questions of one domain: a category of its own, kept out of the
overall false-hit rate (which is over near misses) but bound like the others."""
OLD_PAIRS = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "semantic_cache_pairs.jsonl"
)

Matrix = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ProbeBasis:
    """The mean of the dev interactions and their top principal directions (rows)."""

    mean: Matrix
    components: Matrix


def pair_table(rows: list[dict[str, Any]]) -> tuple[Matrix, Matrix, Matrix]:
    """Lexical features, cosine similarity and embedding interaction of every pair
    (``b`` asked, ``a`` cached)."""
    from ctxproto.models.embedder import get_embedder
    from ctxproto.stores.semantic_cache.query_slots import QuerySlots
    from ctxproto.stores.semantic_cache.verifier import interaction, pair_features

    embedder = get_embedder()
    a = embedder.embed([r["a"] for r in rows])
    b = embedder.embed([r["b"] for r in rows])
    similarity = np.einsum("ij,ij->i", a, b).astype(np.float64)
    features = np.stack(
        [
            pair_features(QuerySlots.of(r["b"]), QuerySlots.of(r["a"]), float(s))
            for r, s in zip(rows, similarity, strict=True)
        ]
    )
    interactions = np.stack([interaction(q, c) for q, c in zip(b, a, strict=True)])
    return features, similarity, interactions


def probe_basis(interactions: Matrix, components: int = COMPONENTS) -> ProbeBasis:
    """The principal directions of ``interactions`` (labels unused, so no fold leaks)."""
    mean = interactions.mean(axis=0)
    _, _, directions = np.linalg.svd(interactions - mean, full_matrices=False)
    return ProbeBasis(mean, directions[:components])


def design(features: Matrix, interactions: Matrix, basis: ProbeBasis) -> Matrix:
    """The model's inputs: lexical features, then the interaction's components."""
    return np.hstack([features, (interactions - basis.mean) @ basis.components.T])


def fold_probe(
    weights: Matrix, bias: float, lexical: int, basis: ProbeBasis
) -> tuple[Matrix, Matrix, float]:
    """Lexical weights, one weight per interaction value, and the bias, for a model
    fitted on ``design``: its component weights folded through the projection."""
    probe = weights[lexical:]
    return (
        weights[:lexical],
        basis.components.T @ probe,
        bias - float(probe @ basis.components @ basis.mean),
    )


def fit(features: Matrix, labels: Matrix, l2: float = L2) -> tuple[Matrix, float]:
    """L2-regularised logistic regression by Newton's method (a few dozen features).

    Fitted on standardized features, so the penalty weighs every feature alike,
    and returned for the raw ones (the scaling folded into weights and bias).
    """
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-9
    x = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - labels) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = w[:-1] / scale
    return weights, float(w[-1] - weights @ mean)


def probability(features: Matrix, weights: Matrix, bias: float) -> Matrix:
    result: Matrix = 1.0 / (1.0 + np.exp(-(features @ weights + bias)))
    return result


def out_of_fold(
    features: Matrix, labels: Matrix, groups: list[str], assignment: int, l2: float = L2
) -> Matrix:
    """Each row's probability from a model fitted without its seed's fold."""
    fold = np.array([(zlib.crc32(g.encode()) // FOLDS**assignment) % FOLDS for g in groups])
    out = np.zeros(len(labels))
    for k in range(FOLDS):
        held = fold == k
        weights, bias = fit(features[~held], labels[~held], l2)
        out[held] = probability(features[held], weights, bias)
    return out


def seed_groups(rows: list[dict[str, Any]]) -> list[str]:
    """A name per row shared by every row its questions connect it to (its seed)."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        while parent.setdefault(text, text) != text:
            text = parent[text]
        return text

    for r in rows:
        parent[root(r["a"])] = root(r["b"])
    return [root(r["a"]) for r in rows]


def other_question_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of two different seed questions of one domain, labelled ``other_question``.

    The near misses teach what a one-slot change looks like; without these the
    verifier never sees two questions that share nothing but a topic ("factory-
    reset a Lumen bulb" / "set up a Lumen plug"), and reads their broad
    difference as a rewording. Every cache lookup meets such neighbours first.
    """
    groups = seed_groups(rows)
    first: dict[str, dict[str, Any]] = {}
    for row, group in zip(rows, groups, strict=True):
        if row["category"] == "paraphrase" and row.get("register") == "written":
            first.setdefault(group, row)
    seeds = list(first.values())
    return [
        {"category": OTHER, "a": x["a"], "b": y["a"], "hit": False, "domain": x.get("domain")}
        for i, x in enumerate(seeds)
        for y in seeds[i + 1 :]
        if x.get("domain") == y.get("domain")
    ]


def rates(accepted: npt.NDArray[np.bool_], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Hit rate per category, ``recall`` over hits and ``false_hits`` over the rest."""
    categories = np.array([r["category"] for r in rows])
    positive = np.array([bool(r["hit"]) for r in rows])
    out = {str(c): float(accepted[categories == c].mean()) for c in sorted(set(categories))}
    out["recall"] = float(accepted[positive].mean())
    out["false_hits"] = float(accepted[~positive & (categories != OTHER)].mean())
    out["worst_category"] = max(v for k, v in out.items() if k not in (*HITS, "recall"))
    return out


def old_pairs(split: str) -> list[dict[str, Any]]:
    """The older hand-written pairs of one split (``train`` or ``test``)."""
    text = OLD_PAIRS.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line]
    return [{**r, "category": f"old_{r['category']}"} for r in rows if r["split"] == split]


def dev_rows() -> list[dict[str, Any]]:
    return load_pairs("dev") + old_pairs("train")


def fitting_table() -> tuple[list[dict[str, Any]], Matrix, Matrix, Matrix]:
    """The dev rows plus their other-question pairs that reach the lowest floor
    (below it no guard is asked), with ``pair_table``'s three columns."""
    rows = dev_rows()
    others = other_question_pairs(rows)
    features, similarity, interactions = pair_table(rows + others)
    keep = np.arange(len(rows) + len(others)) < len(rows)
    keep |= similarity >= min(FLOORS)
    kept = [r for r, k in zip(rows + others, keep, strict=True) if k]
    return kept, features[keep], similarity[keep], interactions[keep]


def identifiers_clear(rows: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """Per pair, whether the identifier rule leaves the decision to the weights: the
    verifier refuses a candidate outright when the two questions name different order
    numbers or codes (``other_identifiers``), whatever its probability."""
    from ctxproto.stores.semantic_cache.query_slots import QuerySlots
    from ctxproto.stores.semantic_cache.verifier import other_identifiers

    return np.array(
        [not other_identifiers(QuerySlots.of(r["b"]), QuerySlots.of(r["a"])) for r in rows],
        dtype=bool,
    )


def operating_point(
    held_out: list[Matrix], similarity: Matrix, rows: list[dict[str, Any]]
) -> tuple[float, float, float]:
    """(mean recall, floor, cut) of the best point within the false-hit bounds on
    out-of-fold probabilities; recall -1 when none is. A pair the identifier rule
    refuses (``identifiers_clear``) is refused at every point, as the cache refuses it."""
    best: tuple[float, float, float] = (-1.0, 1.0, 1.0)
    clear = identifiers_clear(rows)
    for floor in FLOORS:
        for cut in CUTS:
            found = [rates(clear & (similarity >= floor) & (p >= cut), rows) for p in held_out]
            mean = {k: float(np.mean([f[k] for f in found])) for k in found[0]}
            within = mean["false_hits"] <= MAX_FALSE_HITS
            if within and mean["worst_category"] <= MAX_CATEGORY_FALSE_HITS:
                best = max(best, (mean["recall"], floor, cut))
    return best


def main() -> None:
    from ctxproto.models.embedder import get_embedder
    from ctxproto.stores.semantic_cache.verifier import FEATURE_NAMES, WEIGHTS

    rows, features, similarity, interactions = fitting_table()
    basis = probe_basis(interactions)
    inputs = design(features, interactions, basis)
    labels = np.array([float(bool(r["hit"])) for r in rows])
    groups = seed_groups(rows)
    chosen: tuple[float, float, float, float] = (-1.0, 0.0, 1.0, 1.0)
    for l2 in PENALTIES:
        held_out = [out_of_fold(inputs, labels, groups, n, l2) for n in range(3)]
        recall, floor, cut = operating_point(held_out, similarity, rows)
        chosen = max(chosen, (recall, l2, floor, cut))
    recall, l2, floor, cut = chosen
    lexical, interaction_weights, bias = fold_probe(
        *fit(inputs, labels, l2), len(FEATURE_NAMES), basis
    )
    WEIGHTS.write_text(
        json.dumps(
            {
                "fitted_on": "cache_pairs/dev.jsonl, semantic_cache_pairs.jsonl train, "
                "their other-question pairs",
                "embedder": get_embedder().name,
                "l2": l2,
                "interaction_components": COMPONENTS,
                "weights": {
                    n: round(float(w), 6) for n, w in zip(FEATURE_NAMES, lexical, strict=True)
                },
                "interaction_weights": [round(float(w), 6) for w in interaction_weights],
                "bias": round(bias, 6),
                "min_similarity": floor,
                "min_probability": round(cut, 4),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    summary = {"l2": l2, "floor": floor, "min_probability": round(cut, 4), "dev_recall": recall}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
