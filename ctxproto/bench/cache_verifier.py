"""``python -m ctxproto.bench.cache_verifier``: fit the cache's hit verifier.

Fits the logistic regression of ``stores/semantic_cache/verifier.py`` on the
dev split of the labelled pairs (``ctxproto.bench.cache_pairs``) plus the
train split of the older hand-written pairs (their categories prefixed
``old_``), the cached question ``a`` against the asked question ``b``, and
chooses the operating point on those rows alone: the cosine floor and
probability with the highest recall (paraphrases and near-repeats) whose
false hits stay within ``MAX_FALSE_HITS`` overall (a margin under the 2%
target, for what these rows do not show) and ``MAX_CATEGORY_FALSE_HITS`` in
every negative category.
Writes the weights as JSON beside the verifier and the precision/recall curve
to ``docs/img/cache-pr-curve.png``. Neither test split is
ever read here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ctxproto.bench.cache_pairs import load_pairs

__all__ = ["fit", "main"]

MAX_FALSE_HITS = 0.01
MAX_CATEGORY_FALSE_HITS = 0.04
L2 = 0.01
FLOORS = (0.3, 0.4, 0.5, 0.6, 0.7)
OLD_PAIRS = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "semantic_cache_pairs.jsonl"
)
PLOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "cache-pr-curve.png"

Matrix = npt.NDArray[np.float64]


def pair_table(rows: list[dict[str, Any]]) -> tuple[Matrix, Matrix]:
    """Features and cosine similarity of every pair (``b`` asked, ``a`` cached)."""
    from ctxproto.models.embedder import get_embedder
    from ctxproto.stores.semantic_cache.query_slots import QuerySlots
    from ctxproto.stores.semantic_cache.verifier import pair_features

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
    return features, similarity


def fit(features: Matrix, labels: Matrix) -> tuple[Matrix, float]:
    """L2-regularised logistic regression by Newton's method (a few dozen features)."""
    x = np.hstack([features, np.ones((len(features), 1))])
    w = np.zeros(x.shape[1])
    penalty = L2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - labels) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def rates(accepted: npt.NDArray[np.bool_], rows: list[dict[str, Any]]) -> dict[str, float]:
    """Hit rate per category, ``recall`` over hits and ``false_hits`` over the rest."""
    categories = np.array([r["category"] for r in rows])
    positive = np.array([bool(r["hit"]) for r in rows])
    out = {str(c): float(accepted[categories == c].mean()) for c in sorted(set(categories))}
    out["recall"] = float(accepted[positive].mean())
    out["false_hits"] = float(accepted[~positive].mean())
    return out


def old_pairs(split: str) -> list[dict[str, Any]]:
    """The older hand-written pairs of one split (``train`` or ``test``)."""
    text = OLD_PAIRS.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line]
    return [{**r, "category": f"old_{r['category']}"} for r in rows if r["split"] == split]


def main() -> None:
    from ctxproto.stores.semantic_cache.verifier import FEATURE_NAMES, WEIGHTS

    rows = load_pairs("dev") + old_pairs("train")
    features, similarity = pair_table(rows)
    labels = np.array([float(bool(r["hit"])) for r in rows])
    weights, bias = fit(features, labels)
    probability = 1.0 / (1.0 + np.exp(-(features @ weights + bias)))
    best: tuple[float, float, float] = (-1.0, 1.0, 1.0)
    curves: dict[float, list[tuple[float, float]]] = {}
    for floor in FLOORS:
        curves[floor] = []
        for cut in np.linspace(0.05, 0.99, 95):
            found = rates((similarity >= floor) & (probability >= cut), rows)
            curves[floor].append((found["recall"], found["false_hits"]))
            worst = max(v for k, v in found.items() if k not in _HITS)
            if found["false_hits"] <= MAX_FALSE_HITS and worst <= MAX_CATEGORY_FALSE_HITS:
                best = max(best, (found["recall"], floor, float(cut)))
    _, floor, cut = best
    WEIGHTS.write_text(
        json.dumps(
            {
                "fitted_on": "cache_pairs/dev.jsonl, semantic_cache_pairs.jsonl train",
                "weights": {
                    n: round(float(w), 6) for n, w in zip(FEATURE_NAMES, weights, strict=True)
                },
                "bias": round(bias, 6),
                "min_similarity": floor,
                "min_probability": round(cut, 4),
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    chosen = rates((similarity >= floor) & (probability >= cut), rows)
    print(json.dumps({"floor": floor, "min_probability": round(cut, 4), "dev": chosen}, indent=1))
    _plot(curves, rows, similarity, (chosen["recall"], chosen["false_hits"]))


_HITS = ("paraphrase", "old_paraphrase", "near_repeat", "recall", "false_hits")


def _plot(
    curves: dict[float, list[tuple[float, float]]],
    rows: list[dict[str, Any]],
    similarity: Matrix,
    chosen: tuple[float, float],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for floor, points in curves.items():
        recall, false_hits = zip(*points, strict=True)
        axes.plot(false_hits, recall, label=f"verifier, cosine floor {floor}", linewidth=1)
    plain = [rates(similarity >= t, rows) for t in np.linspace(0.4, 0.98, 59)]
    axes.plot(
        [p["false_hits"] for p in plain],
        [p["recall"] for p in plain],
        "k--",
        label="plain cosine (GPTCache)",
    )
    at_08 = rates(similarity >= 0.8, rows)
    axes.plot(at_08["false_hits"], at_08["recall"], "ks", label="plain cosine 0.8")
    axes.plot(chosen[1], chosen[0], "r*", markersize=14, label="chosen operating point")
    axes.set_xlabel("false-hit rate on near misses (dev)")
    axes.set_ylabel("recall on paraphrases + near-repeats (dev)")
    axes.set_xlim(0, 0.6)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    axes.set_title("Semantic cache: recall against false hits, dev split")
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
